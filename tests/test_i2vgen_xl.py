"""I2VGenXLUNet and I2VGenXLPipeline against the reference (diffusers) on tiny random components.

The reference pipeline fails on transformers 5: with its default clip_skip=1 it calls
``text_encoder.text_model.final_layer_norm``, and CLIPTextModel no longer has ``text_model`` (the norm is on the
model itself). Every reference run here is patched at exactly that line: ``_patch_reference_text_model`` gives the
reference's text encoder a ``text_model`` attribute that holds its ``final_layer_norm``; nothing else is changed.
"""

from __future__ import annotations

import io
import math
import types
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import vidiff
from tiny import ref_i2vgen_pipeline, ref_i2vgen_unet, save_ref_pipeline
from vidiff.configuration import ConfigError
from vidiff.models.unet_i2vgen_xl import I2VGenXLUNet

diffusers = pytest.importorskip("diffusers")
warnings.filterwarnings("ignore", category=FutureWarning)
UNET_TOL = 1e-5
TOL = 1e-4


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _image(width: int = 56, height: int = 40, seed: int = 0) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((height, width, 3)) * 255).astype("uint8"))


# ---------------------------------------------------------------------------------------------- model

UNET_CONFIGS = {
    "two_blocks": {},
    "three_blocks_l1": dict(block_out_channels=(16, 32, 32), layers_per_block=1, attention_head_dim=8, norm_num_groups=4,
                            cross_attention_dim=24, num_attention_heads=64,  # ignored by both, as the real config's
                            down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
                            up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D")),
}
_UNETS: dict[str, tuple] = {}


def unet_pair(name: str):
    if name not in _UNETS:
        ref = ref_i2vgen_unet(**UNET_CONFIGS[name])
        ours = I2VGenXLUNet.from_config(ref.config).eval()
        ours.load_state_dict(ref.state_dict(), strict=True)
        _UNETS[name] = (ref, ours)
    return _UNETS[name]


def unet_inputs(dim: int, frames: int, height: int, width: int, batch: int = 2, seed: int = 1) -> dict:
    g = _gen(seed)
    return dict(sample=torch.randn(batch, 4, frames, height, width, generator=g), timestep=torch.tensor(421),
                fps=torch.tensor([16] * batch), image_latents=torch.randn(batch, 4, frames, height, width, generator=g),
                image_embeddings=torch.randn(batch, 1, dim, generator=g), encoder_hidden_states=torch.randn(batch, 7, dim, generator=g))


@pytest.mark.parametrize("name", list(UNET_CONFIGS))
def test_unet_keys_and_attention_layers_match_reference(name):
    ref, ours = unet_pair(name)
    our_sd, ref_sd = ours.state_dict(), ref.state_dict()
    assert list(our_sd) == list(ref_sd)
    assert all(our_sd[k].shape == v.shape for k, v in ref_sd.items())
    assert list(ours.attn_processors) == list(ref.attn_processors)
    assert ours.config.to_dict().keys() <= set(ref.config) | {"_use_default_values"}


@pytest.mark.parametrize("name,frames,height,width", [
    ("two_blocks", 3, 8, 12), ("two_blocks", 1, 6, 10), ("three_blocks_l1", 5, 8, 8), ("three_blocks_l1", 2, 10, 6),
])
def test_unet_forward_matches_reference(name, frames, height, width):
    ref, ours = unet_pair(name)
    kw = unet_inputs(ref.config.cross_attention_dim, frames, height, width)
    with torch.no_grad():
        expected = ref(**kw).sample
        got = ours(**kw).sample
        as_tuple = ours(**{**kw, "fps": torch.tensor([16])}, return_dict=False)[0]  # one fps for the batch
    assert got.shape == expected.shape == (2, 4, frames, height, width)
    assert (got - expected).abs().max().item() < UNET_TOL
    assert (as_tuple - expected).abs().max().item() < UNET_TOL


def test_unet_loads_a_folder_saved_by_the_reference(tmp_path):
    ref, _ = unet_pair("three_blocks_l1")
    ref.save_pretrained(tmp_path / "unet")
    ours = vidiff.I2VGenXLUNet.from_pretrained(tmp_path / "unet")
    assert ours.config.attention_head_dim == 8 and ours.config.num_attention_heads == 64
    our_sd = ours.state_dict()
    assert all(torch.equal(our_sd[k], v) for k, v in ref.state_dict().items())


def test_unet_refuses_bad_inputs_and_configs():
    _, ours = unet_pair("two_blocks")
    kw = unet_inputs(32, 2, 8, 8)
    with pytest.raises(ValueError, match="image_embeddings"):
        ours(**{**kw, "image_embeddings": None})
    with pytest.raises(ValueError, match="image_latents must be"):
        ours(**{**kw, "image_latents": kw["image_latents"][:, :, :1]})
    with pytest.raises(ValueError, match="fps"):
        ours(**{**kw, "fps": torch.tensor([8, 8, 8])})
    with pytest.raises(ConfigError, match="attention_head_dim"):
        I2VGenXLUNet(**{**UNET_CONFIGS["three_blocks_l1"], "attention_head_dim": (8, 8, 8)})
    with pytest.raises(ConfigError, match="same length"):
        I2VGenXLUNet(block_out_channels=(32,), norm_num_groups=2)


# ---------------------------------------------------------------------------------------------- pipeline


def _patch_reference_text_model(pipe):
    """The one change to the reference: transformers 5's CLIPTextModel has final_layer_norm directly, not under
    .text_model, where the reference's encode_prompt looks for it (clip_skip is 1 by default)."""
    pipe.text_encoder.text_model = types.SimpleNamespace(final_layer_norm=pipe.text_encoder.final_layer_norm)
    return pipe


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("i2vgen")
    return save_ref_pipeline(ref_i2vgen_pipeline(tmp), tmp / "pipe")


@pytest.fixture(scope="module")
def ref(folder):
    pipe = _patch_reference_text_model(diffusers.I2VGenXLPipeline.from_pretrained(folder))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def ours(folder):
    pipe = vidiff.DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _both(ref, ours, seed: int = 0, **kw):
    """Run both with the same generator and the same global RNG state (the image latents come from the latter)."""
    torch.manual_seed(100 + seed)
    expected = ref(**kw, generator=_gen(seed)).frames
    torch.manual_seed(100 + seed)
    got = ours(**kw, generator=_gen(seed)).frames
    return expected, got


def test_loads_as_i2vgen_with_reference_keys(ref, ours):
    assert type(ours).__name__ == "I2VGenXLPipeline" and type(ours.unet).__name__ == "I2VGenXLUNet"
    assert ours.scheduler.config.prediction_type == "v_prediction" and ours.scheduler.config.rescale_betas_zero_snr
    for name in ("unet", "vae"):
        r, o = getattr(ref, name).state_dict(), getattr(ours, name).state_dict()
        assert list(r) == list(o) and all(torch.equal(r[k], o[k]) for k in r)


PIPE_CONFIGS = [
    dict(num_frames=3, height=16, width=24, num_inference_steps=3),  # defaults: guidance 9, clip_skip 1, chunk 1
    dict(num_frames=1, height=24, width=16, num_inference_steps=2, negative_prompt="blurry, static", target_fps=8,
         decode_chunk_size=None, clip_skip=None),
    dict(num_frames=4, height=16, width=16, num_inference_steps=3, guidance_scale=1.0, eta=0.5, decode_chunk_size=3,
         num_videos_per_prompt=2),
    dict(num_frames=2, height=32, width=16, num_inference_steps=2, guidance_scale=4.0, prompt=["a cat", "the dog"],
         negative_prompt=["bad", "ugly"], image=[_image(), _image(seed=1)], clip_skip=2),
    dict(num_frames=5, height=16, width=32, num_inference_steps=2, image="tensor", decode_chunk_size=2),
]


@pytest.mark.parametrize("cfg", PIPE_CONFIGS, ids=lambda c: f"f{c['num_frames']}-{c['height']}x{c['width']}")
def test_pipeline_matches_reference(ref, ours, cfg):
    kw = {"prompt": "papers floating in a library", "image": _image(), "output_type": "np", **cfg}
    if isinstance(kw["image"], str):  # a (1, 3, h, w) tensor in [0, 1]
        kw["image"] = torch.from_numpy(np.asarray(_image(40, 48, seed=2), dtype=np.float32) / 255).permute(2, 0, 1)[None]
    expected, got = _both(ref, ours, **kw)
    assert got.shape == expected.shape
    assert got.shape[1:] == (cfg["num_frames"], cfg["height"], cfg["width"], 3)
    assert np.abs(got - expected).max() < TOL


def test_prompt_embeds_output_types_and_tuple(ref, ours):
    g = _gen(7)
    kw = dict(image=_image(), num_frames=2, height=16, width=16, num_inference_steps=2,
              prompt_embeds=torch.randn(1, 77, 32, generator=g), negative_prompt_embeds=torch.randn(1, 77, 32, generator=g))
    expected, got = _both(ref, ours, output_type="pt", **kw)
    assert got.shape == expected.shape == (1, 2, 3, 16, 16) and (got - expected).abs().max() < TOL
    pil = ours(**kw, generator=_gen(0)).frames  # output_type defaults to "pil"
    assert len(pil) == 1 and len(pil[0]) == 2 and pil[0][0].size == (16, 16)
    latents = torch.randn(1, 4, 2, 8, 8, generator=g)
    lat = ours(**kw, latents=latents, output_type="latent").frames
    assert lat.shape == (1, 4, 2, 8, 8)
    as_tuple = ours(**kw, output_type="np", return_dict=False)
    assert isinstance(as_tuple, tuple) and as_tuple[0].shape == (1, 2, 16, 16, 3)


def test_callbacks_replace_tensors_and_interrupt(ours):
    seen = []

    def on_step_end(pipe, i, t, tensors):
        seen.append((i, sorted(tensors)))
        if i == 1:
            pipe._interrupt = True
        return {"latents": tensors["latents"] * 0}

    out = ours(prompt="x", image=_image(), num_frames=2, height=16, width=16, num_inference_steps=4, generator=_gen(0),
               output_type="latent", callback_on_step_end=on_step_end,
               callback_on_step_end_tensor_inputs=["latents", "image_latents", "image_embeddings"])
    assert [s[0] for s in seen] == [0, 1] and seen[0][1] == ["image_embeddings", "image_latents", "latents"]
    assert out.frames.abs().max() == 0


def test_one_image_serves_every_prompt_and_videos_keep_their_image(ours, monkeypatch):
    """vidiff additions: one image for several prompts (the reference fails), and with several images and
    num_videos_per_prompt > 1 each video's image latents are its own image's (the reference tiles them)."""
    calls = []
    real = type(ours.unet).forward

    def spy(self, *args, **kwargs):
        calls.append(kwargs)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(ours.unet), "forward", spy)
    out = ours(prompt=["a", "b"], image=_image(), num_frames=2, height=16, width=16, num_inference_steps=1,
               generator=_gen(0), output_type="np").frames
    assert out.shape == (2, 2, 16, 16, 3)
    calls.clear()
    ours(prompt=["a", "b"], image=[_image(seed=3), _image(seed=4)], num_videos_per_prompt=2, num_frames=2, height=16,
         width=16, num_inference_steps=1, generator=_gen(0), output_type="latent")
    latents, embeds = calls[0]["image_latents"][4:], calls[0]["image_embeddings"][4:]  # the conditional half
    for x in (latents, embeds):
        assert torch.equal(x[0], x[1]) and torch.equal(x[2], x[3]) and not torch.equal(x[1], x[2])


BAD = [
    (dict(image="not/a/file.png"), "no such file"),
    (dict(image=42), "image must be"),
    (dict(image=None), "pass `image`"),
    (dict(image=torch.full((1, 3, 16, 16), 2.0)), r"\[0, 1\]"),
    (dict(image=[_image(), _image(30, 30)]), "one size"),
    (dict(image=[_image(), _image(), _image()]), "3 images for 1 prompts"),
    (dict(height=20), "multiple of 8"),
    (dict(width=30), "multiple of 8"),
    (dict(num_frames=0), "num_frames"),
    (dict(num_inference_steps=0), "num_inference_steps"),
    (dict(num_videos_per_prompt=0), "num_videos_per_prompt"),
    (dict(guidance_scale=math.nan), "finite"),
    (dict(target_fps=0), "target_fps"),
    (dict(target_fps=None), "target_fps"),
    (dict(clip_skip=-1), "clip_skip"),
    (dict(clip_skip=9), "clip_skip"),
    (dict(prompt=None), "both are missing"),
    (dict(prompt=3), "prompt"),
    (dict(negative_prompt=["a", "b"]), "negative_prompt"),
    (dict(latents=torch.zeros(1, 4, 2, 4, 4)), "shape"),
    (dict(generator=[_gen(), _gen()]), "generators"),
    (dict(output_type="gif"), "output_type"),
    (dict(decode_chunk_size=0), "decode_chunk_size"),
    (dict(cross_attention_kwargs=[1]), "cross_attention_kwargs"),
    (dict(callback_on_step_end_tensor_inputs=["noise"]), "not available"),
]


@pytest.mark.parametrize("bad,message", BAD, ids=[f"{i}-{m[:16]}" for i, (_, m) in enumerate(BAD)])
def test_bad_input_is_refused_before_work(ours, monkeypatch, bad, message):
    def boom(*a, **k):
        raise AssertionError("heavy work started before the input was checked")

    for name in ("unet", "text_encoder", "image_encoder", "vae"):
        monkeypatch.setattr(getattr(ours, name), "forward", boom)
    monkeypatch.setattr(ours.vae, "encode", boom)
    kw = dict(prompt="x", image=_image(), num_frames=2, height=16, width=16, num_inference_steps=2)
    kw.update(bad)
    with pytest.raises((ValueError, TypeError), match=message):
        ours(**kw)


# ---------------------------------------------------------------------------------------------- the guide's sample

GUIDE_SAMPLE = '''
import torch
from diffusers import I2VGenXLPipeline
from diffusers.utils import export_to_gif, load_image

pipeline = I2VGenXLPipeline.from_pretrained("ali-vilab/i2vgen-xl", torch_dtype=torch.float16, variant="fp16")
pipeline.enable_model_cpu_offload()

image_url = "https://huggingface.co/datasets/diffusers/docs-images/resolve/main/i2vgen_xl_images/img_0009.png"
image = load_image(image_url).convert("RGB")

prompt = "Papers were floating in the air on a table in the library"
negative_prompt = "Distorted, discontinuous, Ugly, blurry, low resolution, motionless, static, disfigured, disconnected limbs, Ugly faces, incomplete arms"
generator = torch.manual_seed(8888)

frames = pipeline(
prompt=prompt,
image=image,
num_inference_steps=50,
negative_prompt=negative_prompt,
guidance_scale=9.0,
generator=generator
).frames[0]
export_to_gif(frames, "i2v.gif")
'''
IMAGE_URL = "https://huggingface.co/datasets/diffusers/docs-images/resolve/main/i2vgen_xl_images/img_0009.png"
# For speed on a CPU: float32 instead of float16 (fp16 arithmetic is emulated there), and 16x32 pixels x 2 frames
# instead of the default 704x1280 x 16 (the tiny VAE downsamples by 2, not 8); the 50 steps are kept.
SMALL = "height=16, width=32, num_frames=2,"


def test_guide_sample_gives_reference_frames(tmp_path_factory, tmp_path, monkeypatch):
    tmp = tmp_path_factory.mktemp("i2vgen_guide")
    folder = tmp / "i2vgen"
    ref_i2vgen_pipeline(tmp, layers_per_block=1).save_pretrained(folder, variant="fp16")
    png = io.BytesIO()
    _image(100, 70, seed=5).save(png, format="PNG")
    # no network here: the guide's image URL is answered from memory, through vidiff's own load_image
    monkeypatch.setattr("vidiff.media.image.fetch_bytes", lambda url, *a, **k: png.getvalue() if url == IMAGE_URL else None)
    monkeypatch.chdir(tmp_path)

    code = (GUIDE_SAMPLE.replace("from diffusers", "from vidiff").replace('"ali-vilab/i2vgen-xl"', repr(str(folder)))
            .replace("torch.float16", "torch.float32").replace("guidance_scale=9.0,", "guidance_scale=9.0, " + SMALL))
    assert "from diffusers" not in code and code.count(SMALL) == 1
    scope: dict = {}
    exec(compile(code, "guide_i2vgen_xl", "exec"), scope)
    assert (tmp_path / "i2v.gif").stat().st_size > 0
    got = np.stack([np.asarray(f, dtype=np.float32) / 255 for f in scope["frames"]])

    ref = _patch_reference_text_model(diffusers.I2VGenXLPipeline.from_pretrained(folder, torch_dtype=torch.float32, variant="fp16"))
    ref.set_progress_bar_config(disable=True)  # (the reference's enable_model_cpu_offload needs an accelerator)
    image = Image.open(io.BytesIO(png.getvalue())).convert("RGB")
    expected = ref(prompt="Papers were floating in the air on a table in the library", image=image, num_inference_steps=50,
                   negative_prompt=scope["negative_prompt"], guidance_scale=9.0, generator=torch.manual_seed(8888),
                   height=16, width=32, num_frames=2).frames[0]
    expected = np.stack([np.asarray(f, dtype=np.float32) / 255 for f in expected])
    assert got.shape == expected.shape == (2, 16, 32, 3)
    # PIL frames: float differences around 1e-6 may move a value across a rounding edge, one 8-bit step
    assert np.abs(got - expected).max() <= 1 / 255 and np.mean(got != expected) < 1e-3
