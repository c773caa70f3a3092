"""PNDM, Euler ancestral, LMS and LCM schedulers against the reference (diffusers 0.42.1), step by step."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import vidiff.schedulers as ours
from vidiff.configuration import ConfigError
from vidiff.schedulers.updates import lms_coefficient

diffusers = pytest.importorskip("diffusers")

from test_schedulers import RTOL, SD15_STYLE, assert_close, assert_same_schedule, fake_model, public_config  # noqa: E402

NEW = ("PNDMScheduler", "EulerAncestralDiscreteScheduler", "LMSDiscreteScheduler", "LCMScheduler")
ALL = ("DDIMScheduler", "DDPMScheduler", "DPMSolverMultistepScheduler", "EulerDiscreteScheduler") + NEW

# Without scipy the reference's top-level LMSDiscreteScheduler is a placeholder; its module still imports,
# and needs scipy only for integrate.quad (and scipy.stats for beta sigmas).
REF_LMS = importlib.import_module("diffusers.schedulers.scheduling_lms_discrete")


def has_scipy() -> bool:
    return importlib.util.find_spec("scipy") is not None


def simpson_quad(func, a, b, epsrel=None, *, float64=True):
    """scipy.integrate.quad's interface on Simpson's rule, exact for the reference's LMS integrand.

    The integrand is a polynomial of degree order - 1 <= 3, which Simpson's rule integrates exactly.
    ``float64=True`` passes a float64 0-d tensor, which promotes the reference's float32 sigmas so the
    integrand is evaluated in float64; ``float64=False`` passes Python floats as scipy does, so the
    reference evaluates it in float32 (what it really computes, to ~1e-7 relative).
    """
    a, b = float(a), float(b)
    point = (lambda x: torch.tensor(x, dtype=torch.float64)) if float64 else float
    f = lambda x: float(func(point(x)))  # noqa: E731
    return (b - a) / 6 * (f(a) + 4 * f((a + b) / 2) + f(b)), 0.0


def genuine_quad():
    """What the reference integrates with when scipy is installed (its float32 integrand either way)."""
    if has_scipy():
        import scipy.integrate

        return scipy.integrate.quad
    return lambda func, a, b, epsrel=None: simpson_quad(func, a, b, epsrel, float64=False)


@pytest.fixture(autouse=True)
def reference_lms_quadrature(monkeypatch):
    """Step-by-step parity runs the reference's LMS with its integrand integrated exactly (scipy or not)."""
    monkeypatch.setattr(REF_LMS, "integrate", SimpleNamespace(quad=simpson_quad), raising=False)


def ref_class(name: str) -> type:
    return REF_LMS.LMSDiscreteScheduler if name == "LMSDiscreteScheduler" else getattr(diffusers, name)


def pair(name: str, **config):
    return ref_class(name)(**config), getattr(ours, name)(**config)


def run_loop(sched, set_kw, step_kw=None, seed=0, shape=(2, 4, 6, 6), generator=None):
    """Set timesteps and denoise with the fake model; return (model input, prev_sample, x0) per step."""
    sched.set_timesteps(**set_kw)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * sched.init_noise_sigma
    kw = dict(step_kw or {})
    if generator is not None and "generator" in inspect.signature(sched.step).parameters:
        kw["generator"] = generator() if callable(generator) else generator
    trace = []
    for t in sched.timesteps:
        model_in = sched.scale_model_input(x, t)
        out = sched.step(fake_model(model_in, t), t, x, **kw)
        x0 = out.denoised if hasattr(out, "denoised") else getattr(out, "pred_original_sample", None)
        trace.append((model_in, out.prev_sample, x0))
        x = out.prev_sample
    return trace


def check_parity(name, config, set_kw, step_kw=None, generator_seed=None, shape=(2, 4, 6, 6), trajectory_scale=False):
    """Every step's model input, prev_sample and x0 within RTOL of the reference.

    The scale is the step's own magnitude, or with ``trajectory_scale`` the largest magnitude of the
    trajectory so far: float32 rounding made while the sample was large stays in it as it shrinks.
    """
    ref, mine = pair(name, **config)
    assert_close(mine.alphas_cumprod, ref.alphas_cumprod, "alphas_cumprod")
    gen = (lambda: torch.Generator().manual_seed(generator_seed)) if generator_seed is not None else None
    ref_trace = run_loop(ref, set_kw, step_kw, shape=shape, generator=gen)
    my_trace = run_loop(mine, set_kw, step_kw, shape=shape, generator=gen)
    assert_same_schedule(ref, mine)
    assert len(my_trace) == len(ref_trace)
    largest = 1.0
    for i, (expected, actual) in enumerate(zip(ref_trace, my_trace)):
        for what, e, a in zip(("model input", "prev_sample", "pred_original_sample"), expected, actual):
            if e is None:
                continue
            largest = max(largest, e.abs().max().item()) if trajectory_scale else max(e.abs().max().item(), 1.0)
            assert_close(a, e, f"{what} {i}", rtol=RTOL * largest / max(e.abs().max().item(), 1.0))
    return ref, mine


def case_id(config: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in config.items() if k != "trained_betas") or "defaults"


SD15 = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1)
TRAINED = dict(trained_betas=torch.linspace(1e-4, 0.03, 1000).tolist())

# --- PNDM ---

PNDM_CASES = (
    [dict(skip_prk_steps=s, set_alpha_to_one=a) for s in (True, False) for a in (True, False)]
    + [dict(skip_prk_steps=s, timestep_spacing=sp, steps_offset=o) for s in (True, False) for sp in ("leading", "linspace", "trailing") for o in (0, 1)]
    + [dict(skip_prk_steps=s, prediction_type="v_prediction", beta_schedule=b) for s in (True, False) for b in ("scaled_linear", "squaredcos_cap_v2")]
    + [dict(SD15, skip_prk_steps=True, set_alpha_to_one=False), dict(TRAINED, skip_prk_steps=True)]  # SD 1.5's scheduler
)


@pytest.mark.parametrize("config", PNDM_CASES, ids=case_id)
@pytest.mark.parametrize("steps", [5, 9])
def test_pndm_matches_reference(config, steps):
    ref, mine = check_parity("PNDMScheduler", config, dict(num_inference_steps=steps))
    assert torch.equal(mine.prk_timesteps, torch.from_numpy(ref.prk_timesteps.astype(np.int64)))
    assert torch.equal(mine.plms_timesteps, torch.from_numpy(ref.plms_timesteps))


@pytest.mark.parametrize("skip_prk_steps,steps", [(True, 1), (True, 2), (False, 4)])
def test_pndm_shortest_schedules(skip_prk_steps, steps):
    check_parity("PNDMScheduler", dict(skip_prk_steps=skip_prk_steps), dict(num_inference_steps=steps))


# --- Euler ancestral ---

IP2P = dict(  # timbrooks/instruct-pix2pix scheduler_config.json
    beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000,
    prediction_type="epsilon", steps_offset=1, trained_betas=None,
)  # fmt: skip

EA_CASES = (
    [dict(prediction_type=p, beta_schedule=b) for p in ("epsilon", "v_prediction") for b in ("linear", "scaled_linear", "squaredcos_cap_v2")]
    + [dict(timestep_spacing=s, steps_offset=o) for s in ("leading", "linspace", "trailing") for o in (0, 1)]
    + [IP2P, dict(rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing"), TRAINED]
)


@pytest.mark.parametrize("config", EA_CASES, ids=case_id)
def test_euler_ancestral_matches_reference_with_seeded_noise(config):
    check_parity("EulerAncestralDiscreteScheduler", config, dict(num_inference_steps=7), generator_seed=4)


def test_euler_ancestral_noise_per_generator_list_and_unseeded_draws():
    # one generator per batch item: the reference draws each item's noise from its own generator
    make = lambda: [torch.Generator().manual_seed(s) for s in (1, 2)]  # noqa: E731
    ref, mine = pair("EulerAncestralDiscreteScheduler", **IP2P)
    traces = [run_loop(s, dict(num_inference_steps=4), generator=make) for s in (ref, mine)]
    for (_, rp, _), (_, mp, _) in zip(*traces):
        assert_close(mp, rp, "prev_sample")
    # no generator: both draw from the global RNG in the same order
    results = []
    for s in (ref, mine):
        torch.manual_seed(123)
        results.append(run_loop(s, dict(num_inference_steps=3))[-1][1])
    assert_close(results[1], results[0], "global RNG")


# --- LMS ---

LMS_CASES = (
    [dict(prediction_type=p, beta_schedule=b) for p in ("epsilon", "v_prediction", "sample") for b in ("linear", "scaled_linear", "squaredcos_cap_v2")]
    + [dict(timestep_spacing=s, steps_offset=o) for s in ("leading", "linspace", "trailing") for o in (0, 1)]
    + [dict(SD15, use_karras_sigmas=True), dict(use_karras_sigmas=True), dict(use_exponential_sigmas=True, timestep_spacing="leading"), TRAINED]
)


@pytest.mark.parametrize("config", LMS_CASES, ids=case_id)
def test_lms_matches_reference(config):
    # the reference's own float32 integrand moves its samples by up to ~7e-7 of the trajectory's scale
    # (scipy's quad against exact integration, linear betas with sample / v prediction), hence that scale
    check_parity("LMSDiscreteScheduler", config, dict(num_inference_steps=7), trajectory_scale=True)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_lms_lower_orders_match_reference(order):
    check_parity("LMSDiscreteScheduler", dict(SD15), dict(num_inference_steps=6), dict(order=order), trajectory_scale=True)


def test_lms_beta_sigmas_need_scipy_or_match_reference():
    if not has_scipy():
        with pytest.raises(ImportError, match="scipy"):
            ours.LMSDiscreteScheduler(use_beta_sigmas=True)
    else:
        check_parity("LMSDiscreteScheduler", dict(use_beta_sigmas=True), dict(num_inference_steps=6), trajectory_scale=True)


@pytest.mark.parametrize("config", [dict(SD15), dict(use_karras_sigmas=True), dict(prediction_type="sample")], ids=case_id)
def test_lms_matches_reference_with_its_own_quadrature(monkeypatch, config):
    # scipy's quad when installed, else the same float32 integrand integrated by Simpson's rule
    monkeypatch.setattr(REF_LMS, "integrate", SimpleNamespace(quad=genuine_quad()), raising=False)
    ref, mine = pair("LMSDiscreteScheduler", **config)
    for s in (ref, mine):
        s.set_timesteps(12)
    worst = 0.0
    for t in range(12):
        for order in range(1, min(t + 1, 4) + 1):
            for j in range(order):
                expected = ref.get_lms_coefficient(order, t, j)
                worst = max(worst, abs(mine.get_lms_coefficient(order, t, j) - expected) / max(abs(expected), 1.0))
    assert worst <= 1e-6, worst  # measured ~2e-7 against scipy 1.17
    check_parity("LMSDiscreteScheduler", config, dict(num_inference_steps=7), trajectory_scale=True)


def test_lms_coefficient_is_exact_for_polynomials():
    # the Lagrange weights integrate every polynomial of degree < order exactly over [a, b]
    rng = np.random.default_rng(0)
    for order in (1, 2, 3, 4):
        nodes = np.sort(rng.uniform(0.1, 15.0, order))[::-1]
        a, b = nodes[0], nodes[0] * 0.6
        weights = [lms_coefficient(nodes, j, a, b) for j in range(order)]
        for degree in range(order):
            exact = (b ** (degree + 1) - a ** (degree + 1)) / (degree + 1)
            assert abs(sum(w * n**degree for w, n in zip(weights, nodes)) - exact) <= 1e-10 * max(1.0, abs(exact))


# --- LCM ---

# AnimateLCM's guide: LCMScheduler.from_config(pipe.scheduler.config, beta_schedule="linear") on an SD 1.5 config
ANIMATE_LCM = {k: v for k, v in dict(SD15_STYLE, beta_schedule="linear").items() if not k.startswith("_") and k != "skip_prk_steps"}

LCM_CASES = (
    [dict(prediction_type=p, beta_schedule=b) for p in ("epsilon", "v_prediction", "sample") for b in ("linear", "scaled_linear", "squaredcos_cap_v2")]
    + [
        ANIMATE_LCM,
        dict(set_alpha_to_one=False),
        dict(clip_sample=True, clip_sample_range=0.7),
        dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.5),
        dict(rescale_betas_zero_snr=True, prediction_type="v_prediction"),
        dict(timestep_scaling=1.0, original_inference_steps=100),
        TRAINED,
    ]
)

LCM_SETS = [
    dict(num_inference_steps=4),
    dict(num_inference_steps=6, original_inference_steps=25),
    dict(num_inference_steps=4, strength=0.5),
    dict(timesteps=[999, 759, 499, 259, 19]),
    dict(timesteps=[999, 700, 480, 123], strength=0.6),
]


@pytest.mark.parametrize("config", LCM_CASES, ids=case_id)
def test_lcm_matches_reference(config):
    check_parity("LCMScheduler", config, dict(num_inference_steps=4), generator_seed=9)


@pytest.mark.parametrize("set_kw", LCM_SETS, ids=case_id)
def test_lcm_set_timesteps_arguments(set_kw):
    ref, mine = check_parity("LCMScheduler", ANIMATE_LCM, set_kw, generator_seed=9)
    assert mine.num_inference_steps == ref.num_inference_steps and mine.custom_timesteps == ref.custom_timesteps


# --- add_noise, scale_model_input, begin index, outputs ---


@pytest.mark.parametrize("name", ["EulerAncestralDiscreteScheduler", "LMSDiscreteScheduler"])
def test_sigma_add_noise_scale_and_begin_index(name):
    ref, mine = pair(name, **SD15)
    x0, noise = torch.randn(2, 4, 3, 5, 5), torch.randn(2, 4, 3, 5, 5)  # b c f h w
    for s in (ref, mine):
        s.set_timesteps(8)
    t = ref.timesteps[[1, 5]]
    assert_close(mine.add_noise(x0, noise, t), ref.add_noise(x0, noise, t), "add_noise by timestep")
    for s in (ref, mine):  # img2img-style: start part-way through the schedule
        s.set_timesteps(8)
        s.set_begin_index(3)
    assert mine.begin_index == ref.begin_index == 3 and mine.step_index is None
    t = ref.timesteps[3:4].repeat(2)
    assert_close(mine.add_noise(x0, noise, t), ref.add_noise(x0, noise, t), "add_noise with begin_index")
    finals = []
    for s in (ref, mine):
        x = s.add_noise(x0, noise, t)
        gen = torch.Generator().manual_seed(0)
        for step_t in s.timesteps[3:]:
            kw = {"generator": gen} if "generator" in inspect.signature(s.step).parameters else {}
            x = s.step(fake_model(s.scale_model_input(x, step_t), step_t), step_t, x, **kw).prev_sample
        finals.append(x)
    assert_close(finals[1], finals[0], "loop from begin_index")


@pytest.mark.parametrize("name", ["PNDMScheduler", "LCMScheduler"])
def test_alpha_bar_add_noise_and_constants(name):
    ref, mine = pair(name, **SD15)
    x0, noise = torch.randn(3, 4, 2, 5, 5), torch.randn(3, 4, 2, 5, 5)
    t = torch.tensor([999, 500, 3])
    assert_close(mine.add_noise(x0, noise, t), ref.add_noise(x0, noise, t), "add_noise")
    if name == "LCMScheduler":
        assert_close(mine.get_velocity(x0, noise, t), ref.get_velocity(x0, noise, t), "get_velocity")
        assert mine.scale_model_input(x0, 999) is x0
    assert mine.init_noise_sigma == ref.init_noise_sigma == 1.0
    assert len(mine) == len(ref) == 1000 and mine.order == ref.order == 1


def test_lcm_img2img_begin_index_and_previous_timestep():
    ref, mine = pair("LCMScheduler", **ANIMATE_LCM)
    finals = []
    for s in (ref, mine):
        s.set_timesteps(8, strength=0.5)
        s.set_begin_index(1)
        x, gen = torch.ones(1, 2, 3, 3), torch.Generator().manual_seed(3)
        for t in s.timesteps[1:]:
            x = s.step(fake_model(x, t), t, x, generator=gen).prev_sample
        finals.append(x)
    assert_close(finals[1], finals[0], "LCM from begin_index")
    for t in ref.timesteps:
        assert int(mine.previous_timestep(t)) == int(ref.previous_timestep(t))


def test_step_outputs_and_tuples():
    x = torch.randn(1, 2, 3, 3)
    lcm = ours.LCMScheduler()
    lcm.set_timesteps(2)
    t = lcm.timesteps[0]
    out = lcm.step(fake_model(x, t), t, x, generator=torch.Generator().manual_seed(0))
    assert isinstance(out, ours.LCMSchedulerOutput) and torch.equal(out["denoised"], out[1])
    lcm.set_timesteps(2)
    prev, denoised = lcm.step(fake_model(x, t), t, x, generator=torch.Generator().manual_seed(0), return_dict=False)
    assert torch.equal(prev, out.prev_sample) and torch.equal(denoised, out.denoised)
    pndm = ours.PNDMScheduler(skip_prk_steps=True)
    pndm.set_timesteps(3)
    assert len(pndm.step(x, pndm.timesteps[0], x, return_dict=False)) == 1


# --- configs, loading and saving ---

SAVED = {
    "PNDMScheduler": dict(SD15, skip_prk_steps=True),
    "EulerAncestralDiscreteScheduler": IP2P,
    "LMSDiscreteScheduler": dict(SD15, use_karras_sigmas=True),
    "LCMScheduler": dict(ANIMATE_LCM, original_inference_steps=40),
}


@pytest.mark.parametrize("name", NEW)
def test_from_pretrained_diffusers_folder_with_overrides(tmp_path, name):
    ref_class(name)(**SAVED[name]).save_pretrained(tmp_path / "scheduler")
    overrides = dict(timestep_spacing="trailing", steps_offset=0)
    ref = ref_class(name).from_pretrained(tmp_path, subfolder="scheduler", **overrides)
    mine = getattr(ours, name).from_pretrained(tmp_path, subfolder="scheduler", local_files_only=True, **overrides)
    assert mine.config.to_dict() == {k: v for k, v in ref.config.items() if not k.startswith("_")}
    assert mine.config.timestep_spacing == "trailing" and mine.config.beta_start == 0.00085
    for s in (ref, mine):
        s.set_timesteps(5)
    assert_same_schedule(ref, mine)


@pytest.mark.parametrize("name", NEW)
def test_diffusers_loads_what_we_save(tmp_path, name):
    mine = getattr(ours, name)(**SAVED[name])
    mine.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "scheduler_config.json").read_text())["_class_name"] == name
    ref = ref_class(name).from_pretrained(tmp_path)
    assert getattr(ours, name).from_pretrained(tmp_path).config == mine.config
    assert {k: v for k, v in ref.config.items() if not k.startswith("_")} == mine.config.to_dict()
    for s in (ref, mine):
        s.set_timesteps(6)
    assert_same_schedule(ref, mine)


@pytest.mark.parametrize("src", ALL)
@pytest.mark.parametrize("dst", ALL)
def test_from_config_across_all_classes(tmp_path, src, dst):
    if src not in NEW and dst not in NEW:
        pytest.skip("covered by test_schedulers.py")
    (tmp_path / "scheduler_config.json").write_text(json.dumps(SD15_STYLE))
    ref_src = ref_class(src).from_pretrained(tmp_path)
    my_src = getattr(ours, src).from_pretrained(tmp_path)
    assert public_config(my_src) == public_config(ref_src)
    expected = public_config(ref_class(dst).from_config(ref_src.config))
    assert public_config(getattr(ours, dst).from_config(my_src.config)) == expected  # our config
    assert public_config(getattr(ours, dst).from_config(ref_src.config)) == expected  # the reference's FrozenDict
    # a directly built scheduler passes on only what was set, as in the reference
    ref = ref_class(dst).from_config(ref_class(src)(beta_schedule="scaled_linear").config, steps_offset=1)
    mine = getattr(ours, dst).from_config(getattr(ours, src)(beta_schedule="scaled_linear").config, steps_offset=1)
    assert public_config(mine) == public_config(ref)


@pytest.mark.parametrize("name", NEW)
def test_config_keys_defaults_and_compatibles_match_reference(name):
    params = inspect.signature(ref_class(name).__init__).parameters
    defaults = {k: p.default for k, p in params.items() if k != "self"}
    mine = getattr(ours, name)()
    assert mine.config.to_dict() == defaults
    ref_compatibles = {c.__name__ for c in ref_class(name)().compatibles}
    assert {c.__name__ for c in mine.compatibles} == ref_compatibles & set(ours.__all__)


BAD_CONFIGS = [
    ("PNDMScheduler", dict(prediction_type="sample"), "prediction_type.*v_prediction"),
    ("PNDMScheduler", dict(beta_schedule="cosine"), "beta_schedule='cosine'"),
    ("EulerAncestralDiscreteScheduler", dict(prediction_type="sample"), "prediction_type.*epsilon"),
    ("EulerAncestralDiscreteScheduler", dict(timestep_spacing="even"), "timestep_spacing.*trailing"),
    ("LMSDiscreteScheduler", dict(use_karras_sigmas=True, use_exponential_sigmas=True), "only one of"),
    ("LCMScheduler", dict(original_inference_steps=0), "original_inference_steps must be"),
    ("LCMScheduler", dict(trained_betas=[0.1, 0.2]), "trained_betas has 2 values"),
]


@pytest.mark.parametrize("name,config,message", BAD_CONFIGS)
def test_bad_config_values_raise_clear_errors(name, config, message):
    with pytest.raises(ConfigError, match=message):
        getattr(ours, name)(**config)
    with pytest.raises(ConfigError, match=message):
        getattr(ours, name).from_config(config)


def test_bad_arguments_raise_clear_errors():
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(TypeError, match="unexpected argument.*rescale_betas_zero_snr"):
        ours.PNDMScheduler(rescale_betas_zero_snr=True)  # not a PNDM key, as in the reference
    with pytest.raises(ValueError, match="set_timesteps"):
        ours.PNDMScheduler().step(x, 10, x)
    with pytest.raises(ValueError, match="num_inference_steps >= 4"):
        ours.PNDMScheduler(skip_prk_steps=False).set_timesteps(3)
    with pytest.raises(ValueError, match="positive int"):
        ours.EulerAncestralDiscreteScheduler().set_timesteps(0)
    ea = ours.EulerAncestralDiscreteScheduler()
    ea.set_timesteps(4)
    with pytest.raises(ValueError, match="integer index"):
        ea.step(x, 0, x)
    with pytest.raises(ValueError, match="not in scheduler.timesteps"):
        ea.scale_model_input(x, torch.tensor(3.5))
    with pytest.raises(ValueError, match="exactly one"):
        ours.LCMScheduler().set_timesteps()
    with pytest.raises(ValueError, match="larger than original_inference_steps"):
        ours.LCMScheduler(original_inference_steps=10).set_timesteps(12, strength=2.0)
    with pytest.raises(ValueError, match="use at most 5 steps"):
        ours.LCMScheduler(original_inference_steps=10).set_timesteps(8, strength=0.5)
    with pytest.raises(ValueError, match="strictly descending"):
        ours.LCMScheduler().set_timesteps(timesteps=[10, 500])
    with pytest.raises(ValueError, match="set_timesteps"):
        ours.LCMScheduler().step(x, 999, x)
