"""Schedulers against the reference (diffusers 0.42.1): schedules, every step of a sampling loop, loading."""

from __future__ import annotations

import json

import pytest
import torch

import vidiff.schedulers as ours
from vidiff.configuration import ConfigError

diffusers = pytest.importorskip("diffusers")

NAMES = ("DDIMScheduler", "DDPMScheduler", "DPMSolverMultistepScheduler", "EulerDiscreteScheduler")
RTOL = 1e-6


def fake_model(x: torch.Tensor, t) -> torch.Tensor:
    """A deterministic stand-in for the denoiser: depends on the sample and the timestep."""
    t = torch.as_tensor(t, dtype=torch.float32)
    return 0.7 * torch.sin(1.3 * x) + 0.01 * torch.cos(0.37 * t) * x + 0.05


def doubled_model(x: torch.Tensor, t) -> torch.Tensor:
    """Mean and variance channels, for variance_type='learned' / 'learned_range'."""
    return torch.cat([fake_model(x, t), 0.05 * torch.sigmoid(x)], dim=1)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str = "", rtol: float = RTOL) -> None:
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    scale = max(expected.abs().max().item(), 1.0) if expected.numel() else 1.0
    diff = (actual.double() - expected.double()).abs().max().item() if expected.numel() else 0.0
    assert diff <= rtol * scale, f"{what}: max abs diff {diff:.3g} (scale {scale:.3g})"


def pair(name: str, **config):
    return getattr(diffusers, name)(**config), getattr(ours, name)(**config)


def run_loop(sched, set_kw, step_kw=None, seed=0, shape=(2, 4, 6, 6), model=fake_model, generator_seed=None):
    """Set timesteps and denoise with the fake model; return (model input, prev_sample, x0) per step."""
    sched.set_timesteps(**set_kw)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * sched.init_noise_sigma
    gen = torch.Generator().manual_seed(generator_seed) if generator_seed is not None else None
    trace = []
    for t in sched.timesteps:
        model_in = sched.scale_model_input(x, t)
        out = sched.step(model(model_in, t), t, x, generator=gen, **(step_kw or {}))
        trace.append((model_in, out.prev_sample, getattr(out, "pred_original_sample", None)))
        x = out.prev_sample
    return trace


def assert_same_schedule(ref, mine) -> None:
    assert mine.timesteps.dtype == ref.timesteps.dtype, (mine.timesteps.dtype, ref.timesteps.dtype)
    assert_close(mine.timesteps, ref.timesteps, "timesteps")
    if hasattr(ref, "sigmas"):
        assert mine.sigmas.dtype == ref.sigmas.dtype
        assert_close(mine.sigmas, ref.sigmas, "sigmas")
    assert_close(torch.as_tensor(mine.init_noise_sigma), torch.as_tensor(ref.init_noise_sigma), "init_noise_sigma")


def check_parity(name, config, set_kw, step_kw=None, generator_seed=None, model=fake_model, shape=(2, 4, 6, 6)):
    ref, mine = pair(name, **config)
    assert_close(mine.alphas_cumprod, ref.alphas_cumprod, "alphas_cumprod")
    ref_trace = run_loop(ref, set_kw, step_kw, model=model, shape=shape, generator_seed=generator_seed)
    my_trace = run_loop(mine, set_kw, step_kw, model=model, shape=shape, generator_seed=generator_seed)
    assert_same_schedule(ref, mine)
    assert len(my_trace) == len(ref_trace)
    for i, ((ri, rp, rx), (mi, mp, mx)) in enumerate(zip(ref_trace, my_trace)):
        assert_close(mi, ri, f"model input {i}")
        assert_close(mp, rp, f"prev_sample {i}")
        if rx is not None:
            assert_close(mx, rx, f"pred_original_sample {i}")
    return ref, mine


# --- DDIM ---

DDIM_CASES = (
    [dict(beta_schedule=b, prediction_type=p) for b in ("linear", "scaled_linear", "squaredcos_cap_v2") for p in ("epsilon", "v_prediction", "sample")]
    + [dict(timestep_spacing=s, steps_offset=o) for s in ("leading", "linspace", "trailing") for o in (0, 1)]
    + [dict(clip_sample=c, set_alpha_to_one=a) for c in (True, False) for a in (True, False)]
    + [
        dict(clip_sample=True, clip_sample_range=0.5, prediction_type="sample"),
        dict(rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction", clip_sample=False),
        dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.5),
        dict(trained_betas=torch.linspace(1e-4, 0.03, 1000).tolist()),
        # the AnimateDiff guide's scheduler
        dict(beta_schedule="linear", beta_start=0.00085, beta_end=0.012, clip_sample=False, timestep_spacing="linspace", steps_offset=1, set_alpha_to_one=False),
    ]
)


@pytest.mark.parametrize("config", DDIM_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items() if k != "trained_betas") or "trained_betas")
def test_ddim_matches_reference(config):
    check_parity("DDIMScheduler", config, dict(num_inference_steps=7))


@pytest.mark.parametrize("eta,clipped", [(0.0, True), (1.0, False), (0.5, True)])
def test_ddim_eta_noise_matches_reference(eta, clipped):
    check_parity("DDIMScheduler", dict(clip_sample=True, clip_sample_range=0.8), dict(num_inference_steps=6), dict(eta=eta, use_clipped_model_output=clipped), generator_seed=7)


def test_ddim_variance_noise_argument():
    ref, mine = pair("DDIMScheduler")
    for s in (ref, mine):
        s.set_timesteps(5)
    x, noise = torch.randn(1, 2, 3, 3), torch.randn(1, 2, 3, 3)
    t = ref.timesteps[1]
    expected = ref.step(fake_model(x, t), t, x, eta=0.8, variance_noise=noise).prev_sample
    assert_close(mine.step(fake_model(x, t), t, x, eta=0.8, variance_noise=noise).prev_sample, expected)
    with pytest.raises(ValueError, match="generator or variance_noise"):
        mine.step(x, t, x, eta=0.5, variance_noise=noise, generator=torch.Generator())


# --- DDPM ---

DDPM_CASES = (
    [dict(beta_schedule=b) for b in ("linear", "scaled_linear", "squaredcos_cap_v2", "laplace", "sigmoid")]
    + [dict(variance_type=v, prediction_type=p) for v in ("fixed_small", "fixed_small_log", "fixed_large") for p in ("epsilon", "v_prediction", "sample")]
    + [dict(timestep_spacing=s, steps_offset=1, clip_sample=False) for s in ("leading", "linspace", "trailing")]
    + [dict(thresholding=True), dict(rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing")]
)


@pytest.mark.parametrize("config", DDPM_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_ddpm_matches_reference(config):
    check_parity("DDPMScheduler", config, dict(num_inference_steps=6), generator_seed=3)


@pytest.mark.parametrize("variance_type", ["learned", "learned_range"])
def test_ddpm_learned_variance_matches_reference(variance_type):
    check_parity("DDPMScheduler", dict(variance_type=variance_type), dict(num_inference_steps=5), generator_seed=3, model=doubled_model)


def test_ddpm_custom_timesteps_and_default_previous_step():
    check_parity("DDPMScheduler", dict(clip_sample=False), dict(timesteps=[900, 650, 400, 120, 3, 0]), generator_seed=11)
    ref, mine = pair("DDPMScheduler")  # before set_timesteps the previous step is t - 1
    x = torch.randn(1, 2, 3, 3)
    assert_close(mine.step(fake_model(x, 500), 500, x, generator=torch.Generator().manual_seed(0)).prev_sample,
                 ref.step(fake_model(x, 500), 500, x, generator=torch.Generator().manual_seed(0)).prev_sample)  # fmt: skip


# --- DPM-Solver multistep ---

DPM_CASES = (
    [dict(solver_order=o, algorithm_type=a, solver_type=s) for o in (1, 2, 3) for a in ("dpmsolver++", "sde-dpmsolver++") for s in ("midpoint", "heun")]
    + [dict(solver_order=o, algorithm_type=a, solver_type=s, final_sigmas_type="sigma_min") for o in (1, 2) for a in ("dpmsolver", "sde-dpmsolver") for s in ("midpoint", "heun")]
    + [dict(solver_order=3, algorithm_type="dpmsolver", final_sigmas_type="sigma_min")]
    + [dict(prediction_type=p, beta_schedule=b) for p in ("epsilon", "v_prediction", "sample") for b in ("scaled_linear", "squaredcos_cap_v2")]
    + [dict(timestep_spacing=s, steps_offset=1) for s in ("leading", "linspace", "trailing")]
    + [
        dict(use_karras_sigmas=True),
        dict(use_karras_sigmas=True, beta_schedule="scaled_linear", solver_order=3),
        dict(use_exponential_sigmas=True),
        dict(use_lu_lambdas=True, beta_schedule="scaled_linear"),
        dict(lower_order_final=False, solver_order=3),
        dict(euler_at_final=True, final_sigmas_type="sigma_min"),
        dict(lambda_min_clipped=-5.1, final_sigmas_type="sigma_min"),
        dict(rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing"),
        dict(thresholding=True, prediction_type="sample", sample_max_value=1.2),
        dict(thresholding=True, algorithm_type="dpmsolver", final_sigmas_type="sigma_min"),
        dict(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0),
        dict(algorithm_type="deis", solver_type="bh2", final_sigmas_type="sigma_min"),
    ]
)


@pytest.mark.parametrize("config", DPM_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("steps", [6, 16])
def test_dpmsolver_matches_reference(config, steps):
    check_parity("DPMSolverMultistepScheduler", config, dict(num_inference_steps=steps), generator_seed=5)


def test_dpmsolver_custom_timesteps_learned_variance_and_variance_noise():
    check_parity("DPMSolverMultistepScheduler", dict(variance_type="learned_range"), dict(timesteps=[951, 700, 480, 240, 12]),
                 model=doubled_model, shape=(1, 3, 4, 4))  # fmt: skip
    ref, mine = pair("DPMSolverMultistepScheduler", algorithm_type="sde-dpmsolver++")
    for s in (ref, mine):
        s.set_timesteps(4)
    x, noise = torch.randn(1, 2, 3, 3), torch.randn(1, 2, 3, 3)
    for t in ref.timesteps:
        expected = ref.step(fake_model(x, t), t, x, variance_noise=noise).prev_sample
        assert_close(mine.step(fake_model(x, t), t, x, variance_noise=noise).prev_sample, expected)
        x = expected


def test_dpmsolver_config_rewrites_match_reference():
    ref, mine = pair("DPMSolverMultistepScheduler", algorithm_type="deis", solver_type="logrho", final_sigmas_type="sigma_min")
    assert (mine.config.algorithm_type, mine.config.solver_type) == (ref.config.algorithm_type, ref.config.solver_type)


# --- Euler ---

SVD_EULER = dict(  # stabilityai/stable-video-diffusion-img2vid-xt scheduler_config.json
    beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, interpolation_type="linear", num_train_timesteps=1000,
    prediction_type="v_prediction", sigma_max=700.0, sigma_min=0.002, steps_offset=1, timestep_spacing="leading",
    timestep_type="continuous", trained_betas=None, use_karras_sigmas=True,
)  # fmt: skip

EULER_CASES = (
    [dict(prediction_type=p, beta_schedule=b) for p in ("epsilon", "v_prediction", "sample") for b in ("linear", "scaled_linear", "squaredcos_cap_v2")]
    + [dict(timestep_spacing=s, steps_offset=o) for s in ("leading", "linspace", "trailing") for o in (0, 1)]
    + [
        SVD_EULER,
        dict(SVD_EULER, timestep_spacing="linspace"),
        dict(use_karras_sigmas=True),
        dict(use_karras_sigmas=True, sigma_min=0.1, sigma_max=20.0, timestep_spacing="trailing"),
        dict(use_exponential_sigmas=True),
        dict(interpolation_type="log_linear"),
        dict(interpolation_type="log_linear", use_karras_sigmas=True),
        dict(final_sigmas_type="sigma_min"),
        dict(rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing"),
        dict(prediction_type="original_sample"),
    ]
)


@pytest.mark.parametrize("config", EULER_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_euler_matches_reference(config):
    check_parity("EulerDiscreteScheduler", config, dict(num_inference_steps=7))


AYS_SIGMAS = {  # "align your steps" ladders shipped with the reference
    "svd": [700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.0],
    "sd": [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.0],
}


@pytest.mark.parametrize("config,sigmas", [(SVD_EULER, AYS_SIGMAS["svd"]), (dict(beta_schedule="scaled_linear"), AYS_SIGMAS["sd"])], ids=["svd", "sd"])
def test_euler_custom_sigmas_timesteps_and_churn(config, sigmas):
    check_parity("EulerDiscreteScheduler", config, dict(sigmas=sigmas))
    check_parity("EulerDiscreteScheduler", config, dict(num_inference_steps=5), dict(s_churn=1.0, s_noise=1.003), generator_seed=2)
    if config is not SVD_EULER:
        check_parity("EulerDiscreteScheduler", config, dict(timesteps=[999, 760, 501, 250, 17]))


def test_euler_rejects_integer_indices_and_unknown_timesteps():
    sched = ours.EulerDiscreteScheduler()
    sched.set_timesteps(4)
    x = torch.randn(1, 2, 2, 2)
    with pytest.raises(ValueError, match="integer index"):
        sched.step(x, 0, x)
    with pytest.raises(ValueError, match="not in scheduler.timesteps"):
        sched.scale_model_input(x, torch.tensor(3.5))


# --- add_noise, get_velocity, begin index, constants ---


@pytest.mark.parametrize("name", ["DDIMScheduler", "DDPMScheduler"])
def test_alpha_bar_add_noise_and_velocity(name):
    ref, mine = pair(name, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    x0, noise = torch.randn(3, 4, 2, 5, 5), torch.randn(3, 4, 2, 5, 5)  # b c f h w
    t = torch.tensor([999, 500, 3])
    assert_close(mine.add_noise(x0, noise, t), ref.add_noise(x0, noise, t), "add_noise")
    assert_close(mine.get_velocity(x0, noise, t), ref.get_velocity(x0, noise, t), "get_velocity")
    assert len(mine) == len(ref) == 1000 and mine.order == ref.order == 1


@pytest.mark.parametrize("name,config", [("DPMSolverMultistepScheduler", {}), ("EulerDiscreteScheduler", {}), ("EulerDiscreteScheduler", SVD_EULER)])
def test_sigma_add_noise_scale_and_begin_index(name, config):
    ref, mine = pair(name, **config)
    x0, noise = torch.randn(2, 4, 5, 5), torch.randn(2, 4, 5, 5)
    for s in (ref, mine):
        s.set_timesteps(8)
    t = ref.timesteps[[1, 5]]
    assert_close(mine.add_noise(x0, noise, t), ref.add_noise(x0, noise, t), "add_noise by timestep")
    if name == "EulerDiscreteScheduler":
        assert_close(mine.get_velocity(x0, noise, t), ref.get_velocity(x0, noise, t), "get_velocity")
    for s in (ref, mine):  # img2img-style: start part-way through the schedule
        s.set_timesteps(8)
        s.set_begin_index(3)
    assert mine.begin_index == ref.begin_index == 3 and mine.step_index is None
    t = ref.timesteps[3:4].repeat(2)
    assert_close(mine.add_noise(x0, noise, t), ref.add_noise(x0, noise, t), "add_noise with begin_index")
    assert_close(mine.scale_model_input(x0, t[0]), ref.scale_model_input(x0, t[0]), "scale_model_input")
    assert mine.step_index == ref.step_index


def test_sigma_loop_with_begin_index():
    for name in ("DPMSolverMultistepScheduler", "EulerDiscreteScheduler"):
        ref, mine = pair(name)
        traces = []
        for s in (ref, mine):
            s.set_timesteps(10)
            s.set_begin_index(4)
            x = torch.ones(1, 2, 3, 3)
            for t in s.timesteps[4:]:
                x = s.step(fake_model(s.scale_model_input(x, t), t), t, x).prev_sample
            traces.append(x)
        assert_close(traces[1], traces[0], name)


# --- configs, loading and saving ---


def test_from_pretrained_diffusers_folder_with_overrides(tmp_path):
    saved = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=True)
    saved.save_pretrained(tmp_path / "scheduler")
    overrides = dict(clip_sample=False, timestep_spacing="linspace", beta_schedule="linear", steps_offset=1)
    ref = diffusers.DDIMScheduler.from_pretrained(tmp_path, subfolder="scheduler", **overrides)
    mine = ours.DDIMScheduler.from_pretrained(tmp_path, subfolder="scheduler", local_files_only=True, **overrides)
    assert mine.config.to_dict() == {k: v for k, v in ref.config.items() if not k.startswith("_")}
    assert mine.config.beta_schedule == "linear" and mine.config.beta_start == 0.00085
    ref.set_timesteps(5)
    mine.set_timesteps(5)
    assert_same_schedule(ref, mine)
    with pytest.raises(FileNotFoundError, match="scheduler_config.json"):
        ours.DDIMScheduler.from_pretrained(tmp_path)


@pytest.mark.parametrize("name", NAMES)
def test_diffusers_loads_what_we_save(tmp_path, name):
    config = SVD_EULER if name == "EulerDiscreteScheduler" else dict(beta_schedule="scaled_linear", steps_offset=1)
    mine = getattr(ours, name)(**config)
    mine.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "scheduler_config.json").read_text())
    assert data["_class_name"] == name
    ref = getattr(diffusers, name).from_pretrained(tmp_path)
    back = getattr(ours, name).from_pretrained(tmp_path)
    assert back.config == mine.config
    assert {k: v for k, v in ref.config.items() if not k.startswith("_")} == mine.config.to_dict()
    for s in (ref, mine):
        s.set_timesteps(6)
    assert_same_schedule(ref, mine)


# A scheduler_config.json as early checkpoints ship it: many keys missing, another class named.
SD15_STYLE = {
    "_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "beta_start": 0.00085, "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True,
    "steps_offset": 1, "trained_betas": None, "clip_sample": False,
}  # fmt: skip


def public_config(sched) -> dict:
    """Everything a scheduler's config holds (its keys and the loaded ones it ignores), as saved."""
    data = sched.config_dict_for_saving() if hasattr(sched, "config_dict_for_saving") else dict(sched.config)
    return {k: v for k, v in data.items() if not k.startswith("_")}


@pytest.mark.parametrize("src", NAMES)
@pytest.mark.parametrize("dst", NAMES)
def test_from_config_across_classes(tmp_path, src, dst):
    (tmp_path / "scheduler_config.json").write_text(json.dumps(SD15_STYLE))
    ref_src = getattr(diffusers, src).from_pretrained(tmp_path)
    my_src = getattr(ours, src).from_pretrained(tmp_path)
    assert public_config(my_src) == public_config(ref_src)
    expected = public_config(getattr(diffusers, dst).from_config(ref_src.config))
    assert public_config(getattr(ours, dst).from_config(my_src.config)) == expected  # our config
    assert public_config(getattr(ours, dst).from_config(ref_src.config)) == expected  # the reference's FrozenDict
    # a directly built scheduler passes on only what was set, as in the reference
    ref = getattr(diffusers, dst).from_config(getattr(diffusers, src)(beta_schedule="scaled_linear").config, steps_offset=1)
    mine = getattr(ours, dst).from_config(getattr(ours, src)(beta_schedule="scaled_linear").config, steps_offset=1)
    assert public_config(mine) == public_config(ref)


def test_from_config_plain_dict_and_compatibles():
    mine = ours.EulerDiscreteScheduler.from_config(dict(SD15_STYLE, timestep_spacing="trailing"), prediction_type="v_prediction")
    assert mine.config.timestep_spacing == "trailing" and mine.config.prediction_type == "v_prediction"
    assert mine.config.beta_schedule == "scaled_linear"
    _, unused = ours.DDIMScheduler.from_config(SD15_STYLE, return_unused_kwargs=True)
    assert "skip_prk_steps" in unused
    names = {c.__name__ for c in ours.DDIMScheduler().compatibles}
    # every vidiff scheduler the reference lists as compatible, and no other
    from vidiff.schedulers.base import KARRAS_DIFFUSION_SCHEDULERS

    assert names == {n for n in ours.__all__ if n in KARRAS_DIFFUSION_SCHEDULERS} and names >= set(NAMES)
    assert {c.__name__ for c in diffusers.DDIMScheduler().compatibles} >= names


BAD_CONFIGS = [
    ("DDIMScheduler", dict(beta_schedule="cosine"), "beta_schedule='cosine'.*squaredcos_cap_v2"),
    ("DDIMScheduler", dict(prediction_type="flow"), "prediction_type.*v_prediction"),
    ("DDPMScheduler", dict(variance_type="fixed"), "variance_type.*fixed_small"),
    ("DDPMScheduler", dict(timestep_spacing="even"), "timestep_spacing.*trailing"),
    ("DPMSolverMultistepScheduler", dict(solver_order=4), "solver_order"),
    ("DPMSolverMultistepScheduler", dict(algorithm_type="unipc"), "algorithm_type.*dpmsolver\\+\\+"),
    ("DPMSolverMultistepScheduler", dict(algorithm_type="dpmsolver"), "final_sigmas_type='sigma_min'"),
    ("DPMSolverMultistepScheduler", dict(use_karras_sigmas=True, use_exponential_sigmas=True), "only one of"),
    ("EulerDiscreteScheduler", dict(interpolation_type="cubic"), "interpolation_type.*log_linear"),
    ("EulerDiscreteScheduler", dict(timestep_type="edm"), "timestep_type.*continuous"),
    ("EulerDiscreteScheduler", dict(trained_betas=[0.1, 0.2]), "trained_betas has 2 values"),
]


@pytest.mark.parametrize("name,config,message", BAD_CONFIGS)
def test_bad_config_values_raise_clear_errors(name, config, message):
    with pytest.raises(ConfigError, match=message):
        getattr(ours, name)(**config)
    with pytest.raises(ConfigError, match=message):
        getattr(ours, name).from_config(config)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(TypeError, match="unexpected argument.*beta_shedule"):
        ours.DDIMScheduler(beta_shedule="linear")
    with pytest.raises(ValueError, match="set_timesteps"):
        ours.DDIMScheduler().step(torch.zeros(1), 10, torch.zeros(1))
    with pytest.raises(ValueError, match="larger than num_train_timesteps"):
        ours.DDIMScheduler().set_timesteps(1001)
    with pytest.raises(ValueError, match="exactly one"):
        ours.EulerDiscreteScheduler().set_timesteps()
    with pytest.raises(ValueError, match="use_karras_sigmas"):
        ours.EulerDiscreteScheduler(use_karras_sigmas=True).set_timesteps(timesteps=[900, 500])
    with pytest.raises(ValueError, match="strictly descending"):
        ours.DDPMScheduler().set_timesteps(timesteps=[10, 500])
    with pytest.raises(NotImplementedError, match="third-order"):
        s = ours.DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver", solver_order=3, final_sigmas_type="sigma_min")
        s.set_timesteps(20)
        x = torch.zeros(1, 1, 2, 2)
        for t in s.timesteps[:3]:
            x = s.step(x, t, x).prev_sample
    with pytest.raises(TypeError, match="from_pretrained"):
        ours.DDIMScheduler.from_config("some/model")


def test_beta_sigmas_need_scipy_or_match_reference():
    try:
        import scipy  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="scipy"):
            ours.EulerDiscreteScheduler(use_beta_sigmas=True)
    else:
        check_parity("EulerDiscreteScheduler", dict(use_beta_sigmas=True), dict(num_inference_steps=6))


def test_step_output_tuple_and_indexing():
    ref, mine = pair("DDIMScheduler")
    for s in (ref, mine):
        s.set_timesteps(4)
    x = torch.randn(1, 2, 3, 3)
    t = mine.timesteps[0]
    prev, x0 = mine.step(fake_model(x, t), t, x, return_dict=False)
    out = mine.step(fake_model(x, t), t, x)
    assert torch.equal(out[0], prev) and torch.equal(out["pred_original_sample"], x0)
    assert_close(prev, ref.step(fake_model(x, t), t, x, return_dict=False)[0])
    dpm = ours.DPMSolverMultistepScheduler()
    dpm.set_timesteps(4)
    assert len(dpm.step(fake_model(x, 999), dpm.timesteps[0], x, return_dict=False)) == 1


@pytest.mark.parametrize("name", NAMES)
def test_config_keys_and_defaults_match_reference(name):
    import inspect

    params = inspect.signature(getattr(diffusers, name).__init__).parameters
    defaults = {k: p.default for k, p in params.items() if k != "self"}
    mine = getattr(ours, name)().config.to_dict()
    assert set(mine) == set(defaults)
    assert mine == defaults
