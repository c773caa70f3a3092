"""StableDiffusionPipeline / StableDiffusionInstructPix2PixPipeline: same seed -> the reference's images, folders the
reference saved (safety_checker=None, or naming a safety checker vidiff does not have) load, bad input fails early."""

from __future__ import annotations

import json
import logging
import warnings

import numpy as np
import PIL.Image
import pytest
import torch

import vidiff
from tiny import clip_text_encoder, clip_tokenizer, ref_vae

warnings.filterwarnings("ignore", category=FutureWarning)
TOL = 1e-4


def ref_unet2d(seed: int = 0, in_channels: int = 4, **overrides):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    kwargs = dict(block_out_channels=(32, 64), layers_per_block=2, sample_size=16, in_channels=in_channels, out_channels=4,
                  down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                  cross_attention_dim=32, attention_head_dim=4, norm_num_groups=2)
    kwargs.update(overrides)
    return UNet2DConditionModel(**kwargs).eval()


def ddim():
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1)


def sd_components(tmp, unet_in_channels: int = 4, seed: int = 0) -> dict:
    """Tiny reference SD components (VAE scale factor 2, 16x16 latent default -> 32x32 images)."""
    return dict(vae=ref_vae(seed), text_encoder=clip_text_encoder(seed), tokenizer=clip_tokenizer(tmp),
                unet=ref_unet2d(seed, unet_in_channels), scheduler=ddim(), safety_checker=None, feature_extractor=None,
                requires_safety_checker=False)


def load_pair(folder, name: str):
    import diffusers

    ref = getattr(diffusers, name).from_pretrained(folder, safety_checker=None, feature_extractor=None)
    ours = getattr(vidiff, name).from_pretrained(folder, safety_checker=None, feature_extractor=None)
    for p in (ref, ours):
        p.set_progress_bar_config(disable=True)
    return ref, ours


def swap(ref, ours, name: str, **config):
    import diffusers

    ref.scheduler = getattr(diffusers, name).from_config(ref.scheduler.config, **config)
    ours.scheduler = getattr(vidiff, name).from_config(ours.scheduler.config, **config)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def max_diff(a, b) -> float:
    a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = b.detach().cpu().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def explode(*modules):
    """Make the heavy models raise, to prove bad input is refused before any of them runs."""
    for m in modules:
        m.forward = lambda *a, **k: (_ for _ in ()).throw(AssertionError("a model ran before the input was checked"))


# ---------------------------------------------------------------------------------------------- text -> image
@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    from diffusers import StableDiffusionPipeline

    tmp = tmp_path_factory.mktemp("sd")
    StableDiffusionPipeline(**sd_components(tmp)).save_pretrained(tmp / "pipe")
    return tmp / "pipe"


@pytest.fixture(scope="module")
def sd(sd_folder):
    return load_pair(sd_folder, "StableDiffusionPipeline")


def test_sd_loads_with_reference_keys_and_no_safety_checker(sd, sd_folder):
    ref, ours = sd
    assert type(ours).__name__ == "StableDiffusionPipeline" and ours.safety_checker is None
    index = json.loads((sd_folder / "model_index.json").read_text())
    assert index["safety_checker"] == [None, None] and index["requires_safety_checker"] is False
    assert type(vidiff.DiffusionPipeline.from_pretrained(sd_folder)).__name__ == "StableDiffusionPipeline"
    for name in ("unet", "vae"):
        r, o = getattr(ref, name).state_dict(), getattr(ours, name).state_dict()
        assert list(r) == list(o) and all(torch.equal(r[k], o[k]) for k in r)


def test_sd_folder_naming_a_safety_checker_loads_without_it(sd_folder, tmp_path, caplog):
    import shutil

    folder = tmp_path / "with_checker"
    shutil.copytree(sd_folder, folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]
    index["requires_safety_checker"] = True
    (folder / "model_index.json").write_text(json.dumps(index))
    with caplog.at_level(logging.WARNING, logger="vidiff"):
        pipe = vidiff.StableDiffusionPipeline.from_pretrained(folder)
    assert pipe.safety_checker is None and pipe.requires_safety_checker is True
    assert sum("safety_checker" in r.getMessage() for r in caplog.records) == 1
    pipe = vidiff.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, feature_extractor=None)
    assert pipe.safety_checker is None


@pytest.mark.parametrize("case", [
    dict(scheduler=None, kw=dict(prompt="a cat", guidance_scale=7.5, num_images_per_prompt=2, negative_prompt="blurry", eta=0.5)),
    dict(scheduler=("EulerDiscreteScheduler", {}), kw=dict(prompt=["a cat", "the dog"], guidance_scale=1.0, height=32, width=48)),
    dict(scheduler=("DPMSolverMultistepScheduler", {}), kw=dict(prompt="on the moon", guidance_scale=5.0, guidance_rescale=0.7,
                                                                height=48, width=32)),
], ids=["ddim-cfg-eta-2per", "euler-nocfg-nonsquare-2prompts", "dpm-rescale-nonsquare"])
def test_sd_matches_reference(sd, case):
    ref, ours = sd
    if case["scheduler"]:
        swap(ref, ours, case["scheduler"][0], **case["scheduler"][1])
    else:
        swap(ref, ours, "DDIMScheduler")
    kw = dict(num_inference_steps=3, output_type="np", **case["kw"])
    a = ref(generator=gen(), **kw).images
    b = ours(generator=gen(), **kw).images
    assert max_diff(a, b) < TOL


def test_sd_custom_timesteps_pt_latent_and_pil(sd):
    ref, ours = sd
    swap(ref, ours, "DDIMScheduler")
    kw = dict(prompt="a cat", num_inference_steps=3, guidance_scale=3.0)
    a = ref(generator=gen(1), output_type="pt", **kw).images
    b = ours(generator=gen(1), output_type="pt", **kw).images
    assert isinstance(b, torch.Tensor) and max_diff(a, b) < TOL
    swap(ref, ours, "DPMSolverMultistepScheduler")
    a = ref(generator=gen(2), output_type="latent", timesteps=[900, 500, 100], **kw).images
    b = ours(generator=gen(2), output_type="latent", timesteps=[900, 500, 100], **kw).images
    assert max_diff(a, b) < TOL
    out = ours(generator=gen(3), **kw)
    assert isinstance(out.images[0], PIL.Image.Image) and out.nsfw_content_detected is None and out[0] is out.images


def test_sd_callback_on_step_end_and_legacy_callback(sd):
    _, ours = sd
    swap(*sd, "DDIMScheduler")
    seen, legacy = [], []

    def on_step(pipe, i, t, kw):
        seen.append((i, tuple(kw["prompt_embeds"].shape)))
        return {"latents": kw["latents"] * 0} if i == 2 else {}

    out = ours("a cat", num_inference_steps=3, output_type="latent", callback_on_step_end=on_step,
               callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"], callback=lambda i, t, x: legacy.append(i),
               callback_steps=1)
    assert [s[0] for s in seen] == [0, 1, 2] and seen[0][1][0] == 2 and legacy == [0, 1, 2]
    assert torch.count_nonzero(out.images) == 0


@pytest.mark.parametrize("bad, err", [
    (dict(height=31, width=32), ValueError),
    (dict(ip_adapter_image=PIL.Image.new("RGB", (32, 32))), NotImplementedError),
    (dict(callback_on_step_end_tensor_inputs=["image"]), ValueError),
    (dict(num_images_per_prompt=0), ValueError),
    (dict(generator=[torch.Generator()] * 3), ValueError),
    (dict(latents=torch.randn(1, 4, 8, 8)), ValueError),
    (dict(timesteps=[900, 100], sigmas=[1.0, 0.0]), ValueError),
    (dict(unknown_argument=1), TypeError),
], ids=["size", "ip-adapter", "callback-input", "images-per-prompt", "generators", "latents", "timesteps+sigmas", "kwarg"])
def test_sd_bad_input_before_models_run(sd_exploded, bad, err):
    with pytest.raises(err):
        sd_exploded("a cat", num_inference_steps=2, **bad)


@pytest.fixture(scope="module")
def sd_exploded(sd_folder):
    pipe = vidiff.StableDiffusionPipeline.from_pretrained(sd_folder, safety_checker=None)
    explode(pipe.unet, pipe.text_encoder, pipe.vae)
    return pipe


# ---------------------------------------------------------------------------------------------- InstructPix2Pix
@pytest.fixture(scope="module")
def p2p_folder(tmp_path_factory):
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline

    tmp = tmp_path_factory.mktemp("p2p")
    components = sd_components(tmp, unet_in_channels=8, seed=1)
    components["scheduler"] = EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    StableDiffusionInstructPix2PixPipeline(**components).save_pretrained(tmp / "pipe")
    return tmp / "pipe"


@pytest.fixture(scope="module")
def p2p(p2p_folder):
    return load_pair(p2p_folder, "StableDiffusionInstructPix2PixPipeline")


def _photo(h=32, w=32, seed=0):
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("case", [
    dict(scheduler=None, kw=dict(prompt="make it winter", image=_photo(), guidance_scale=7.5, image_guidance_scale=1.5)),
    dict(scheduler=None, kw=dict(prompt="make it winter", image=torch.rand(1, 3, 32, 48, generator=gen(5)), guidance_scale=7.5,
                                 image_guidance_scale=0.5, num_images_per_prompt=2)),
    dict(scheduler=("EulerDiscreteScheduler", {}), kw=dict(prompt=["make it winter", "add fireworks"], image=_photo(48, 32, 1),
                                                           guidance_scale=3.0, image_guidance_scale=2.0, negative_prompt=["ugly", "dark"])),
    dict(scheduler=("DDIMScheduler", {}), kw=dict(prompt="make it winter", image=[_photo(seed=2), _photo(seed=3)],
                                                  guidance_scale=1.0, num_images_per_prompt=2)),
], ids=["euler-a-cfg", "euler-a-tensor-nonsquare-no-image-cfg-2per", "euler-2prompts-image-scale-2", "ddim-2images-nocfg"])
def test_pix2pix_matches_reference(p2p, case):
    ref, ours = p2p
    if case["scheduler"]:
        swap(ref, ours, case["scheduler"][0], **case["scheduler"][1])
    else:
        swap(ref, ours, "EulerAncestralDiscreteScheduler")
    kw = dict(num_inference_steps=3, output_type="np", **case["kw"])
    a = ref(generator=gen(), **kw).images
    b = ours(generator=gen(), **kw).images
    assert max_diff(a, b) < TOL


def test_pix2pix_callback_sees_image_latents(p2p):
    _, ours = p2p
    shapes = []
    ours("make it winter", image=_photo(), num_inference_steps=2, output_type="latent",
         callback_on_step_end=lambda p, i, t, kw: shapes.append(tuple(kw["image_latents"].shape)) or {},
         callback_on_step_end_tensor_inputs=["latents", "image_latents"])
    assert shapes == [(3, 4, 16, 16)] * 2


@pytest.mark.parametrize("bad, err", [
    (dict(image=None), ValueError),
    (dict(image="not an image"), TypeError),
    (dict(prompt=["a", "b", "c"], image=[_photo(), _photo()]), ValueError),
    (dict(image_guidance_scale=float("nan")), ValueError),
    (dict(latents=torch.randn(1, 4, 8, 8)), ValueError),
], ids=["no-image", "bad-type", "image-count", "nan-scale", "latents"])
def test_pix2pix_bad_input_before_models_run(p2p_exploded, bad, err):
    pipe = p2p_exploded
    kw = dict(prompt="make it winter", image=_photo(), num_inference_steps=2)
    kw.update(bad)
    with pytest.raises(err):
        pipe(**kw)


@pytest.fixture(scope="module")
def p2p_exploded(p2p_folder):
    pipe = vidiff.StableDiffusionInstructPix2PixPipeline.from_pretrained(p2p_folder, safety_checker=None)
    explode(pipe.unet, pipe.text_encoder, pipe.vae)
    return pipe


def test_pix2pix_refuses_a_plain_sd_unet(sd_folder):
    pipe = vidiff.StableDiffusionInstructPix2PixPipeline.from_pretrained(sd_folder, safety_checker=None)
    explode(pipe.unet, pipe.text_encoder, pipe.vae)
    with pytest.raises(ValueError, match="in_channels = 8"):
        pipe("make it winter", image=_photo(), num_inference_steps=2)
