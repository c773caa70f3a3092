"""AnimateDiffPipeline / AnimateDiffVideoToVideoPipeline: an SD 1.5-style folder and a motion adapter saved by the
reference, loaded by both libraries; same seed -> the reference's frames (every scheduler, FreeInit, 8 and 16 frames,
non-square); the guide's sample; clear errors before any model runs."""

from __future__ import annotations

import importlib
import math
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import vidiff
from tiny import clip_image_processor, clip_text_encoder, clip_tokenizer, ref_vae

warnings.filterwarnings("ignore", category=FutureWarning)
torch.set_num_threads(1)
TOL = 1e-4
MAX_FRAMES = 16

UNET = dict(
    block_out_channels=(32, 64), layers_per_block=1, sample_size=4, in_channels=4, out_channels=4, cross_attention_dim=32,
    norm_num_groups=16, attention_head_dim=4,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
)  # fmt: skip
ADAPTER = dict(block_out_channels=(32, 64), motion_layers_per_block=1, motion_norm_num_groups=16, motion_num_attention_heads=4,
               motion_max_seq_length=MAX_FRAMES)
# runwayml/stable-diffusion-v1-5 scheduler/scheduler_config.json
SD15_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                      set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, clip_sample=False)
# the guide's DDIM swap
GUIDE_DDIM = dict(clip_sample=False, timestep_spacing="linspace", beta_schedule="linear", steps_offset=1)
# Without scipy the reference's top-level LMSDiscreteScheduler is a placeholder; its module imports and needs scipy only
# for integrate.quad of a polynomial (the LMS coefficients), which Gauss-Legendre quadrature integrates exactly.
REF_LMS = importlib.import_module("diffusers.schedulers.scheduling_lms_discrete")


def _gauss_quad(func, a, b, epsrel=None):
    x, w = np.polynomial.legendre.leggauss(8)
    half = (b - a) / 2
    return float(sum(wi * func(float(a + half * (xi + 1))) for xi, wi in zip(x, w)) * half), 0.0


@pytest.fixture(autouse=True)
def reference_lms_quadrature(monkeypatch):
    if getattr(REF_LMS, "integrate", None) is None:
        monkeypatch.setattr(REF_LMS, "integrate", SimpleNamespace(quad=_gauss_quad), raising=False)


def perturb(module: torch.nn.Module, seed: int, scale: float = 0.05) -> torch.nn.Module:
    """Random offsets on every weight, so the zero-initialised motion-module outputs are not the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return module.eval()


def write_sd_folder(tmp: Path) -> Path:
    """A tiny SD 1.5-layout folder (PNDM scheduler, feature extractor, no safety checker) saved by the reference."""
    import diffusers

    torch.manual_seed(0)
    unet = perturb(diffusers.UNet2DConditionModel(**UNET), 3)
    pipe = diffusers.StableDiffusionPipeline(
        vae=ref_vae(0), text_encoder=clip_text_encoder(0), tokenizer=clip_tokenizer(tmp), unet=unet,
        scheduler=diffusers.PNDMScheduler.from_config(SD15_SCHEDULER), safety_checker=None, feature_extractor=clip_image_processor(32),
        requires_safety_checker=False,
    )  # fmt: skip
    pipe.save_pretrained(tmp / "sd")
    return tmp / "sd"


def write_adapter_folder(tmp: Path, **overrides) -> Path:
    import diffusers

    torch.manual_seed(1)
    perturb(diffusers.MotionAdapter(**{**ADAPTER, **overrides}), 4).save_pretrained(tmp / "adapter")
    return tmp / "adapter"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("animatediff")
    return write_sd_folder(tmp), write_adapter_folder(tmp)


def load_pair(folders, name: str = "AnimateDiffPipeline"):
    import diffusers

    sd, adapter = folders
    ref = getattr(diffusers, name).from_pretrained(sd, motion_adapter=diffusers.MotionAdapter.from_pretrained(adapter))
    ours = getattr(vidiff, name).from_pretrained(sd, motion_adapter=vidiff.MotionAdapter.from_pretrained(adapter))
    for pipe in (ref, ours):
        pipe.set_progress_bar_config(disable=True)
    return ref, ours


@pytest.fixture(scope="module")
def pair(folders):
    return load_pair(folders)


@pytest.fixture(scope="module")
def v2v_pair(pair):
    """The video-to-video pipelines on the same (already loaded) components."""
    import diffusers

    ref = diffusers.AnimateDiffVideoToVideoPipeline(**pair[0].components)
    ours = vidiff.AnimateDiffVideoToVideoPipeline(**pair[1].components)
    for pipe in (ref, ours):
        pipe.set_progress_bar_config(disable=True)
    return ref, ours


def swap(ref, ours, name: str, **config):
    import diffusers

    ref_cls = REF_LMS.LMSDiscreteScheduler if name == "LMSDiscreteScheduler" else getattr(diffusers, name)
    ref.scheduler = ref_cls.from_config(ref.scheduler.config, **config)
    ours.scheduler = getattr(vidiff, name).from_config(ours.scheduler.config, **config)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def both(ref, ours, seed: int = 0, **kwargs):
    expected = ref(**kwargs, generator=gen(seed)).frames
    got = ours(**kwargs, generator=gen(seed)).frames
    assert got.shape == expected.shape
    return float(np.abs(got - expected).max())


# ---------------------------------------------------------------------------------------------- loading


def test_sd_folder_with_adapter_loads_with_reference_weights(pair):
    ref, ours = pair
    assert type(ours.unet).__name__ == "UNetMotionModel" and type(ours.scheduler).__name__ == "PNDMScheduler"
    r, o = ref.unet.state_dict(), ours.unet.state_dict()
    assert list(r) == list(o)
    assert all(torch.equal(r[k], o[k]) for k in r)
    assert ours.feature_extractor is not None and ours.image_encoder is None


@pytest.mark.parametrize("dtype", [None, torch.float16])
def test_sd_folder_loads_straight_into_the_motion_unet(folders, monkeypatch, dtype):
    """With motion_adapter= the SD folder's UNet is read into the motion UNet directly: the same model as
    from_unet2d(UNet2DConditionModel.from_pretrained(...), adapter), without building the 2-D UNet."""
    from vidiff.models.unet_motion import UNetMotionModel

    sd, adapter_folder = folders
    adapter = vidiff.MotionAdapter.from_pretrained(adapter_folder)
    expected = UNetMotionModel.from_unet2d(vidiff.UNet2DConditionModel.from_pretrained(sd, subfolder="unet", torch_dtype=dtype), adapter)

    def refuse(*args, **kwargs):
        raise AssertionError("the 2-D UNet was built")

    monkeypatch.setattr(vidiff.UNet2DConditionModel, "from_pretrained", classmethod(refuse))
    monkeypatch.setattr(UNetMotionModel, "from_unet2d", classmethod(refuse))
    pipe = vidiff.AnimateDiffPipeline.from_pretrained(sd, motion_adapter=adapter, torch_dtype=dtype)
    got, want = pipe.unet.state_dict(), expected.state_dict()
    assert type(pipe.unet) is UNetMotionModel and not pipe.unet.training
    assert dict(pipe.unet.config) == dict(expected.config)
    assert list(got) == list(want)
    assert all(got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]) for k in want)
    assert {p.requires_grad for p in pipe.unet.parameters()} == {True}
    # the adapter's tensors are copied, as from_unet2d copies them: the two modules do not share storage
    adapter_ptrs = {t.data_ptr() for t in adapter.state_dict().values()}
    assert not adapter_ptrs & {t.data_ptr() for t in got.values()}


def test_motion_unet_from_a_folder_that_does_not_fit_names_the_keys(folders, tmp_path):
    from vidiff.loading.errors import CheckpointError
    from vidiff.loading.weights import load_state_dict, save_state_dict

    sd, adapter_folder = folders
    broken = tmp_path / "sd"
    import shutil

    shutil.copytree(sd, broken)
    state = load_state_dict(broken / "unet" / "diffusion_pytorch_model.safetensors")
    del state["conv_out.bias"]
    save_state_dict(state, broken / "unet")
    with pytest.raises(CheckpointError, match=r"conv_out\.bias"):
        vidiff.AnimateDiffPipeline.from_pretrained(broken, motion_adapter=vidiff.MotionAdapter.from_pretrained(adapter_folder))


def test_motion_unet_from_a_folder_reads_the_requested_variant(folders, tmp_path):
    """variant="fp16" reaches the direct motion-UNet load: a unet folder holding only fp16-variant weights loads,
    as UNet2DConditionModel.from_pretrained(variant="fp16") + from_unet2d would."""
    import shutil

    from vidiff.loading.weights import load_state_dict, save_state_dict
    from vidiff.models.unet_motion import UNetMotionModel

    sd, adapter_folder = folders
    folder = tmp_path / "sd"
    shutil.copytree(sd, folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    state = {k: v.half() for k, v in load_state_dict(weights).items()}
    weights.unlink()
    save_state_dict(state, folder / "unet", variant="fp16")
    adapter = vidiff.MotionAdapter.from_pretrained(adapter_folder)
    pipe = vidiff.AnimateDiffPipeline.from_pretrained(folder, motion_adapter=adapter, variant="fp16")
    expected = UNetMotionModel.from_unet2d(vidiff.UNet2DConditionModel.from_pretrained(folder, subfolder="unet", variant="fp16"), adapter)
    got, want = pipe.unet.state_dict(), expected.state_dict()
    assert list(got) == list(want) and all(got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]) for k in want)


def test_pia_adapter_goes_through_from_unet2d(folders, monkeypatch):
    """An adapter with its own input convolution (PIA) mixes the UNet's conv_in with its own: from_unet2d does it."""
    from vidiff.models.unet_motion import UNetMotionModel

    sd, _ = folders
    torch.manual_seed(2)
    adapter = vidiff.MotionAdapter(**ADAPTER, conv_in_channels=9)
    calls = []
    original = UNetMotionModel.from_unet2d.__func__
    monkeypatch.setattr(UNetMotionModel, "from_unet2d", classmethod(lambda cls, *a, **k: calls.append(1) or original(cls, *a, **k)))
    pipe = vidiff.AnimateDiffPipeline.from_pretrained(sd, motion_adapter=adapter)
    unet_2d = vidiff.UNet2DConditionModel.from_pretrained(sd, subfolder="unet")
    assert calls == [1] and pipe.unet.conv_in.weight.shape[1] == 9
    assert torch.equal(pipe.unet.conv_in.weight[:, :4], unet_2d.conv_in.weight)
    assert torch.equal(pipe.unet.conv_in.weight[:, 4:], adapter.conv_in.weight[:, 4:])


def test_save_pretrained_folders_load_in_the_other_library(pair, tmp_path):
    import diffusers

    ref, ours = pair
    ours.save_pretrained(tmp_path / "ours")
    back = diffusers.AnimateDiffPipeline.from_pretrained(tmp_path / "ours")
    back.set_progress_bar_config(disable=True)
    ref.save_pretrained(tmp_path / "ref")  # UNetMotionModel + MotionAdapter folders, no SD UNet
    again = vidiff.DiffusionPipeline.from_pretrained(tmp_path / "ref")
    again.set_progress_bar_config(disable=True)
    assert type(again).__name__ == "AnimateDiffPipeline" and type(again.unet).__name__ == "UNetMotionModel"
    kw = dict(prompt="a", num_frames=3, num_inference_steps=2, output_type="np")
    assert both(back, again, **kw) < TOL


# ---------------------------------------------------------------------------------------------- text -> video parity

CONFIGS = [
    dict(scheduler=("DDIMScheduler", GUIDE_DDIM), num_frames=8, steps=3),
    dict(scheduler=("DDIMScheduler", GUIDE_DDIM), num_frames=16, height=8, width=16, steps=2, eta=0.6, negative_prompt="blurry"),
    dict(scheduler=("PNDMScheduler", {}), num_frames=5, height=16, width=8, steps=3, guidance_scale=1.0),
    dict(scheduler=("EulerDiscreteScheduler", {}), num_frames=8, height=8, width=16, steps=2),
    dict(scheduler=("EulerAncestralDiscreteScheduler", {}), num_frames=8, steps=2),
    dict(scheduler=("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}), num_frames=16, steps=3),
    dict(scheduler=("LMSDiscreteScheduler", {}), num_frames=6, height=8, width=16, steps=2),
    dict(scheduler=("LCMScheduler", {}), num_frames=8, steps=2, guidance_scale=1.5),
    dict(scheduler=("DDIMScheduler", GUIDE_DDIM), num_frames=4, steps=2, prompt=["a cat", "the dog"], negative_prompt=["bad", "ugly"]),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c['scheduler'][0]}-f{c['num_frames']}-{c.get('height', 8)}x{c.get('width', 8)}")
def test_text_to_video_matches_reference(pair, cfg):
    ref, ours = pair
    swap(ref, ours, *cfg["scheduler"][:1], **cfg["scheduler"][1])
    kw = dict(prompt=cfg.get("prompt", "a red circle"), num_frames=cfg["num_frames"], num_inference_steps=cfg["steps"],
              guidance_scale=cfg.get("guidance_scale", 7.5), negative_prompt=cfg.get("negative_prompt"), eta=cfg.get("eta", 0.0),
              output_type="np")
    for key in ("height", "width"):
        if key in cfg:
            kw[key] = cfg[key]
    assert both(ref, ours, seed=3, **kw) < TOL


@pytest.mark.parametrize("method,fast,iters", [("butterworth", False, 2), ("gaussian", True, 3), ("ideal", False, 2)])
def test_free_init_matches_reference(pair, method, fast, iters):
    ref, ours = pair
    swap(ref, ours, "DDIMScheduler", **GUIDE_DDIM)
    for pipe in (ref, ours):
        pipe.enable_free_init(num_iters=iters, use_fast_sampling=fast, method=method, order=3, spatial_stop_frequency=0.3,
                              temporal_stop_frequency=0.2)
    try:
        diff = both(ref, ours, prompt="a cat", num_frames=6, height=8, width=16, num_inference_steps=3, output_type="np")
    finally:
        for pipe in (ref, ours):
            pipe.disable_free_init()
    assert diff < TOL


def test_free_init_filters_match_reference_loops():
    from diffusers.pipelines.free_init_utils import FreeInitMixin as RefFreeInit

    from vidiff.pipelines.free_init import low_pass_filter

    for method in ("butterworth", "gaussian", "ideal"):
        for spatial, temporal in ((0.25, 0.25), (0.4, 0.1), (0.0, 0.3)):
            shape = (1, 4, 5, 6, 7)
            expected = RefFreeInit()._get_free_init_freq_filter(shape, "cpu", method, 4, spatial, temporal)
            assert torch.equal(low_pass_filter(shape, method, 4, spatial, temporal), expected)


def test_num_videos_per_prompt_equals_repeated_prompts(pair):
    ref, ours = pair
    swap(ref, ours, "DDIMScheduler", **GUIDE_DDIM)
    kw = dict(num_frames=3, num_inference_steps=2, output_type="np")
    # the reference resets num_videos_per_prompt to 1; vidiff honours it: same as listing each prompt twice
    expected = ref(prompt=["a", "a", "b", "b"], negative_prompt=["x", "x", "y", "y"], generator=gen(1), **kw).frames
    got = ours(prompt=["a", "b"], negative_prompt=["x", "y"], num_videos_per_prompt=2, generator=gen(1), **kw).frames
    assert got.shape == expected.shape == (4, 3, 8, 8, 3)
    assert np.abs(got - expected).max() < TOL


def test_generator_list_latents_embeds_and_output_types(pair):
    ref, ours = pair
    swap(ref, ours, "DDIMScheduler", **GUIDE_DDIM)
    kw = dict(prompt=["a", "b"], num_frames=3, num_inference_steps=2, output_type="np")
    assert np.abs(ref(**kw, generator=[gen(1), gen(2)]).frames - ours(**kw, generator=[gen(1), gen(2)]).frames).max() < TOL
    latents = torch.randn(1, 4, 3, 4, 4, generator=gen(5))
    embeds = torch.randn(1, 77, 32, generator=gen(6))
    kw = dict(prompt_embeds=embeds, negative_prompt_embeds=-embeds, num_frames=3, num_inference_steps=2, latents=latents)
    expected, got = ref(**kw, output_type="pt").frames, ours(**kw, output_type="pt").frames
    assert got.shape == expected.shape == (1, 3, 3, 8, 8) and (got - expected).abs().max() < TOL
    pil = ours(**kw).frames  # default output_type="pil"
    assert len(pil) == 1 and len(pil[0]) == 3 and pil[0][0].size == (8, 8)
    assert ours(**kw, output_type="latent").frames.shape == (1, 4, 3, 4, 4)
    out = ours(**kw, output_type="np", return_dict=False)
    assert isinstance(out, tuple) and out[0].shape == (1, 3, 8, 8, 3)
    assert isinstance(ours(**kw, output_type="np"), vidiff.AnimateDiffPipelineOutput)


def test_decode_chunk_size_and_vae_slicing_give_same_frames(pair):
    _, ours = pair
    kw = dict(prompt="x", num_frames=5, num_inference_steps=2, output_type="np")
    base = ours(**kw, generator=gen(0)).frames
    chunked = ours(**kw, generator=gen(0), decode_chunk_size=2).frames
    ours.enable_vae_slicing()
    try:
        sliced = ours(**kw, generator=gen(0)).frames
    finally:
        ours.disable_vae_slicing()
    assert np.abs(chunked - base).max() < 1e-5 and np.abs(sliced - base).max() < 1e-5


def test_callbacks_replace_latents_and_interrupt(pair):
    ref, ours = pair
    swap(ref, ours, "DDIMScheduler", **GUIDE_DDIM)

    def halve(pipe, i, t, kwargs):
        assert kwargs["prompt_embeds"].shape[0] == 2 * 3  # [uncond, cond] x frames, as the reference passes it
        return {"latents": kwargs["latents"] * 0.5}

    kw = dict(prompt="x", num_frames=3, num_inference_steps=3, output_type="np", callback_on_step_end=halve,
              callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"])
    assert both(ref, ours, **kw) < TOL
    seen = []

    def stop(pipe, i, t, kwargs):
        seen.append(i)
        pipe._interrupt = i == 1
        return {}

    ours.enable_free_init(num_iters=2)
    try:
        ours(prompt="x", num_frames=2, num_inference_steps=4, output_type="latent", callback_on_step_end=stop)
    finally:
        ours.disable_free_init()
    assert seen == [0, 1]  # the interrupt also ends the FreeInit passes


def test_unet_gets_the_text_once_per_video_unless_a_callback_sees_it(pair):
    """The reference repeats the text states per frame; vidiff gives the UNet one copy per video (the same frames),
    except when a callback may change prompt_embeds: then the UNet gets exactly what the callback left."""
    ref, ours = pair
    seen = []
    hook = ours.unet.register_forward_pre_hook(lambda m, a, k: seen.append(k["encoder_hidden_states"].shape[0]), with_kwargs=True)
    try:
        kw = dict(prompt="x", num_frames=3, num_inference_steps=2, output_type="np")
        assert both(ref, ours, **kw) < TOL
        assert set(seen) == {2}  # [uncond, cond], not x 3 frames
        seen.clear()

        def scale(pipe, i, t, kwargs):
            kwargs["prompt_embeds"].mul_(0.5)  # in place: the UNet must see it
            return {}

        kw.update(callback_on_step_end=scale, callback_on_step_end_tensor_inputs=["prompt_embeds"])
        assert both(ref, ours, **kw) < TOL
        assert set(seen) == {2 * 3}
    finally:
        hook.remove()


def test_lora_on_matches_reference(pair, tmp_path):
    from test_lora import motion_lora

    ref, ours = pair
    swap(ref, ours, "DDIMScheduler", **GUIDE_DDIM)
    motion_lora(ours.unet, tmp_path / "lora", seed=7)
    for pipe in (ref, ours):
        pipe.load_lora_weights(tmp_path / "lora", adapter_name="zoom")
    try:
        kw = dict(prompt="a", num_frames=8, height=8, width=16, num_inference_steps=2, output_type="np")
        with_lora = ours(**kw, generator=gen(0)).frames
        assert both(ref, ours, cross_attention_kwargs={"scale": 0.7}, **kw) < TOL
        assert both(ref, ours, **kw) < TOL
    finally:
        for pipe in (ref, ours):
            pipe.unload_lora_weights()
    assert np.abs(ours(**kw, generator=gen(0)).frames - with_lora).max() > 1e-3  # the LoRA did something


# ---------------------------------------------------------------------------------------------- video -> video


def _video(frames: int, h: int = 8, w: int = 16, seed: int = 0) -> list[np.ndarray]:
    return [np.random.default_rng(seed + i).random((h, w, 3), dtype=np.float32) for i in range(frames)]


V2V = [
    dict(video=_video(4), height=8, width=16, num_inference_steps=5, strength=0.6),
    dict(video=_video(8, 16, 8), num_inference_steps=4, strength=1.0, scheduler=("EulerDiscreteScheduler", {})),  # resized to 8x8
    dict(video=_video(3), height=8, width=16, num_inference_steps=4, strength=0.5, enforce_inference_steps=True,
         scheduler=("DPMSolverMultistepScheduler", {})),
    dict(video=_video(5), height=8, width=16, num_inference_steps=6, strength=0.7, free_init=True),
]


@pytest.mark.parametrize("cfg", V2V, ids=lambda c: f"f{len(c['video'])}-s{c['strength']}-{c.get('scheduler', ('DDIM',))[0]}")
def test_video_to_video_matches_reference(v2v_pair, cfg):
    ref, ours = v2v_pair
    cfg = dict(cfg)
    name, sched = cfg.pop("scheduler", ("DDIMScheduler", GUIDE_DDIM))
    swap(ref, ours, name, **sched)
    free_init = cfg.pop("free_init", False)
    for pipe in (ref, ours):
        pipe.enable_free_init(num_iters=3, use_fast_sampling=True) if free_init else pipe.disable_free_init()
    try:
        assert both(ref, ours, seed=4, prompt="a blue square", output_type="np", **cfg) < TOL
    finally:
        for pipe in (ref, ours):
            pipe.disable_free_init()


def test_video_to_video_pil_batch_and_latents(v2v_pair):
    from PIL import Image

    ref, ours = v2v_pair
    swap(ref, ours, "DDIMScheduler", **GUIDE_DDIM)
    clips = [[Image.fromarray((f * 255).astype("uint8")) for f in _video(3, 12, 20, seed=s)] for s in (0, 9)]
    kw = dict(video=clips, prompt=["a", "b"], height=8, width=16, num_inference_steps=4, strength=0.5, output_type="np")
    expected = ref(**kw, generator=[gen(1), gen(2)]).frames
    got = ours(**kw, generator=[gen(1), gen(2)]).frames
    assert got.shape == expected.shape == (2, 3, 8, 16, 3) and np.abs(got - expected).max() < TOL
    latents = torch.randn(1, 4, 3, 4, 8, generator=gen(3))
    kw = dict(latents=latents, prompt="a", height=8, width=16, num_inference_steps=4, strength=0.5, output_type="np")
    assert both(ref, ours, **kw) < TOL
    assert both(ref, ours, enforce_inference_steps=True, **kw) < TOL


# ---------------------------------------------------------------------------------------------- the guide's sample

GUIDE_SAMPLE = '''
import torch
from diffusers import AnimateDiffPipeline, DDIMScheduler, MotionAdapter
from diffusers.utils import export_to_gif

adapter = MotionAdapter.from_pretrained("guoyww/animatediff-motion-adapter-v1-5-2", torch_dtype=torch.float16)

pipeline = AnimateDiffPipeline.from_pretrained("emilianJR/epiCRealism", motion_adapter=adapter, torch_dtype=torch.float16)
scheduler = DDIMScheduler.from_pretrained(
"emilianJR/epiCRealism",
subfolder="scheduler",
clip_sample=False,
timestep_spacing="linspace",
beta_schedule="linear",
steps_offset=1,
)
pipeline.scheduler = scheduler
pipeline.enable_vae_slicing()
pipeline.enable_model_cpu_offload()

output = pipeline(
prompt="A space rocket with trails of smoke behind it launching into space from the desert, 4k, high resolution",
negative_prompt="bad quality, worse quality, low resolution",
num_frames=16,
guidance_scale=7.5,
num_inference_steps=50,
generator=torch.Generator("cpu").manual_seed(49),
)
frames = output.frames[0]
export_to_gif(frames, "animation.gif")
'''


def test_guide_sample_gives_reference_frames(folders, tmp_path, monkeypatch):
    """The guide's AnimateDiff blocks with only the import and the model ids changed, plus float32 for float16 (half
    precision on a CPU is emulated and slow; the arithmetic is otherwise the same)."""
    import diffusers

    sd, adapter = folders
    monkeypatch.chdir(tmp_path)
    code = (GUIDE_SAMPLE.replace("from diffusers", "from vidiff").replace('"guoyww/animatediff-motion-adapter-v1-5-2"', repr(str(adapter)))
            .replace('"emilianJR/epiCRealism"', repr(str(sd))).replace("torch.float16", "torch.float32"))
    assert "diffusers" not in code
    scope: dict = {}
    exec(compile(code, "guide_animatediff", "exec"), scope)
    assert (tmp_path / "animation.gif").stat().st_size > 0
    ours = np.stack([np.asarray(f, dtype=np.float32) for f in scope["frames"]]) / 255

    ref = diffusers.AnimateDiffPipeline.from_pretrained(sd, motion_adapter=diffusers.MotionAdapter.from_pretrained(adapter))
    ref.scheduler = diffusers.DDIMScheduler.from_pretrained(sd, subfolder="scheduler", **GUIDE_DDIM)
    # the reference's pipeline has lost enable_vae_slicing() (its VAE keeps it), and its enable_model_cpu_offload()
    # needs an accelerator: the CPU run is the same computation
    ref.vae.enable_slicing()
    ref.set_progress_bar_config(disable=True)
    out = ref(prompt="A space rocket with trails of smoke behind it launching into space from the desert, 4k, high resolution",
              negative_prompt="bad quality, worse quality, low resolution", num_frames=16, guidance_scale=7.5,
              num_inference_steps=50, generator=torch.Generator("cpu").manual_seed(49))
    expected = np.stack([np.asarray(f, dtype=np.float32) for f in out.frames[0]]) / 255
    assert ours.shape == expected.shape == (16, 8, 8, 3)
    assert np.abs(ours - expected).max() <= 1 / 255  # PIL frames: uint8 rounding of the same floats


# ---------------------------------------------------------------------------------------------- errors

BAD_T2V = [
    (dict(num_frames=MAX_FRAMES + 1), "motion_max_seq_length=16"),
    (dict(num_frames=0), "num_frames"),
    (dict(height=13), "multiple of"),
    (dict(width=-8), "multiple of"),
    (dict(num_inference_steps=0), "num_inference_steps"),
    (dict(guidance_scale=math.nan), "finite"),
    (dict(num_videos_per_prompt=0), "num_videos_per_prompt"),
    (dict(latents=torch.zeros(1, 4, 2, 2, 2)), "shape"),
    (dict(latents=torch.full((1, 4, 2, 4, 4), math.nan)), "NaN"),
    (dict(prompt_embeds=torch.zeros(1, 77, 32)), "not both"),
    (dict(prompt=None), "both are missing"),
    (dict(prompt={0: "a", 8: "b"}), "prompt"),
    (dict(generator=[torch.Generator(), torch.Generator()]), "generators"),
    (dict(output_type="gif"), "output_type"),
    (dict(decode_chunk_size=0), "decode_chunk_size"),
    (dict(callback_on_step_end_tensor_inputs=["noise"]), "not available"),
    (dict(ip_adapter_image=np.zeros((8, 8, 3))), "IP-Adapter"),
    (dict(strength=0.5), "unexpected keyword"),
]


def _no_heavy_work(monkeypatch, pipe):
    def boom(*a, **k):
        raise AssertionError("heavy work started before the input was checked")

    for module in (pipe.unet, pipe.text_encoder, pipe.vae):
        monkeypatch.setattr(module, "forward", boom)
    monkeypatch.setattr(pipe.vae, "encode", boom)


@pytest.mark.parametrize("bad,message", BAD_T2V, ids=[m.split()[0] + str(i) for i, (_, m) in enumerate(BAD_T2V)])
def test_bad_input_is_refused_before_work(pair, monkeypatch, bad, message):
    _, ours = pair
    _no_heavy_work(monkeypatch, ours)
    kw = dict(prompt="x", num_frames=2, num_inference_steps=2)
    kw.update(bad)
    with pytest.raises((ValueError, TypeError, NotImplementedError), match=message):
        ours(**kw)


BAD_V2V = [
    (dict(strength=1.5), "strength"),
    (dict(strength=0.1, num_inference_steps=4), "no denoising step"),
    (dict(video=None), "exactly one"),
    (dict(latents=torch.zeros(1, 4, 2, 4, 4)), "exactly one"),
    (dict(video=_video(MAX_FRAMES + 1)), "motion_max_seq_length=16"),
    (dict(video=[_video(2), _video(2, seed=5)]), "videos"),
    (dict(video=[]), "empty"),
    (dict(timesteps=[900, 500], sigmas=[1.0, 0.5]), "not both"),
    (dict(sigmas=[3.0, 1.0, 0.5]), "sigmas"),
]


@pytest.mark.parametrize("bad,message", BAD_V2V, ids=[m.split()[0] + str(i) for i, (_, m) in enumerate(BAD_V2V)])
def test_video_to_video_bad_input(v2v_pair, monkeypatch, bad, message):
    _, ours = v2v_pair
    swap(*v2v_pair, "DDIMScheduler", **GUIDE_DDIM)
    _no_heavy_work(monkeypatch, ours)
    kw = dict(prompt="x", video=_video(2), height=8, width=16, num_inference_steps=4)
    kw.update(bad)
    with pytest.raises((ValueError, TypeError), match=message):
        ours(**kw)


def test_adapter_that_does_not_fit_the_unet_is_refused(folders, tmp_path):
    sd, _ = folders
    wide = vidiff.MotionAdapter(**{**ADAPTER, "block_out_channels": (32, 32)})
    with pytest.raises(ValueError, match=r"block_out_channels \[32, 32\] differ from the UNet's \[32, 64\]"):
        vidiff.AnimateDiffPipeline.from_pretrained(sd, motion_adapter=wide)
    deep = vidiff.MotionAdapter(**{**ADAPTER, "motion_layers_per_block": 2})
    with pytest.raises(ValueError, match="layers per block"):
        vidiff.AnimateDiffPipeline.from_pretrained(sd, motion_adapter=deep)


@pytest.mark.parametrize("kwargs,message", [
    (dict(method="box"), "method"), (dict(num_iters=0), "num_iters"), (dict(spatial_stop_frequency=1.5), "spatial_stop_frequency"),
    (dict(order=0), "order"),
])
def test_free_init_bad_settings(pair, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pair[1].enable_free_init(**kwargs)


def test_nan_during_denoising_names_the_step(pair, monkeypatch):
    _, ours = pair
    real = ours.unet.forward

    def nan_unet(*a, **k):
        return (real(*a, **k)[0] * math.nan,)

    monkeypatch.setattr(ours.unet, "forward", nan_unet)
    with pytest.raises(vidiff.NonFiniteError, match="step 0"):
        ours(prompt="x", num_frames=2, num_inference_steps=2)
