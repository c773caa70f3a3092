"""StableVideoDiffusionPipeline: same seed -> the reference's frames, the guide's SVD sample, the CLI, clear errors."""

from __future__ import annotations

import io
import json
import logging
import math
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import vidiff
from tiny import ref_svd_pipeline, save_ref_pipeline
from vidiff.cli import main
from vidiff.pipelines import image_encoding

diffusers = pytest.importorskip("diffusers")
warnings.filterwarnings("ignore", category=FutureWarning)
TOL = 1e-4


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _image(width: int = 56, height: int = 40, seed: int = 0) -> Image.Image:
    """A smooth picture with some edges (pure noise would make every resize look alike)."""
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    rng = np.random.default_rng(seed)
    rgb = np.stack([np.sin(6 * x + rng.random() * 3), np.cos(5 * y + rng.random() * 3), ((x + y) * 3 % 1.0)], -1)
    rgb = (rgb + 1) / 2 if rgb.min() < 0 else rgb
    return Image.fromarray((np.clip(rgb, 0, 1) * 255).astype("uint8"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_ref_pipeline(ref_svd_pipeline(), tmp_path_factory.mktemp("svd") / "pipe")


@pytest.fixture(scope="module")
def ref(folder):
    pipe = diffusers.StableVideoDiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def ours(folder):
    pipe = vidiff.DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_loads_as_svd_with_reference_keys(ref, ours):
    assert type(ours) is vidiff.StableVideoDiffusionPipeline
    assert type(ours.image_encoder).__name__ == "CLIPVisionModelWithProjection"
    for name in ("unet", "vae", "image_encoder"):
        r, o = getattr(ref, name).state_dict(), getattr(ours, name).state_dict()
        assert list(r) == list(o) and all(torch.equal(r[k], o[k]) for k in r)


# ---------------------------------------------------------------------------------------------- parity
CONFIGS = [
    dict(num_frames=3, height=16, width=24, num_inference_steps=3),  # defaults: ramp 1 -> 3, chunk == frames
    dict(num_frames=5, height=24, width=16, num_inference_steps=2, decode_chunk_size=2, fps=12, motion_bucket_id=40,
         noise_aug_strength=0.3, image=(300, 200)),  # chunk < frames, downscaled (blurred) CLIP input
    dict(num_frames=3, height=16, width=16, num_inference_steps=2, min_guidance_scale=2.0, max_guidance_scale=2.0,
         num_videos_per_prompt=2, generators=2),  # min == max, two videos from one image, a generator per video
    dict(num_frames=4, height=16, width=32, num_inference_steps=2, max_guidance_scale=1.0, noise_aug_strength=0.0,
         motion_bucket_id=200, fps=3, decode_chunk_size=8),  # guidance off, chunk > frames
    dict(num_frames=1, height=16, width=16, num_inference_steps=2, min_guidance_scale=1.5, max_guidance_scale=4.0),
    dict(num_frames=3, height=16, width=24, sigmas=[700.0, 20.0, 1.0, 0.0]),  # custom sigmas replace the steps
]


def _ids(cfg):
    keys = ("num_frames", "height", "width", "decode_chunk_size", "max_guidance_scale", "num_videos_per_prompt", "sigmas")
    return "-".join(f"{k[:5]}{cfg[k]}" for k in keys if k in cfg).replace(" ", "")


@pytest.mark.parametrize("cfg", CONFIGS, ids=_ids)
def test_matches_reference(ref, ours, cfg):
    cfg = dict(cfg)
    image = _image(*cfg.pop("image", (56, 40)))
    n = cfg.pop("generators", 0)
    gen = (lambda: [_gen(i) for i in range(n)]) if n else (lambda: _gen(3))
    expected = ref(image, **cfg, generator=gen(), output_type="np").frames
    got = ours(image, **cfg, generator=gen(), output_type="np").frames
    assert got.shape == expected.shape == (cfg.get("num_videos_per_prompt", 1), cfg["num_frames"], cfg["height"], cfg["width"], 3)
    assert np.abs(got - expected).max() < TOL


@pytest.mark.parametrize("cfg", CONFIGS[:2], ids=_ids)
def test_latents_match_reference(ref, ours, cfg):
    """The denoised latents themselves (more sensitive than decoded frames). At least 3 steps: the first Euler step
    from sigma 700 leaves rounding of ulp(700) ~ 6e-5 in the latents that only later steps shrink."""
    cfg = {k: v for k, v in cfg.items() if k not in ("image", "generators")} | {"num_inference_steps": 4}
    expected = ref(_image(), **cfg, generator=_gen(1), output_type="latent").frames
    got = ours(_image(), **cfg, generator=_gen(1), output_type="latent").frames
    assert got.shape == expected.shape == (1, cfg["num_frames"], 4, cfg["height"] // 2, cfg["width"] // 2)
    assert (got - expected).abs().max() < TOL


def test_image_as_list_and_tensor(ref, ours):
    kw = dict(num_frames=2, height=16, width=24, num_inference_steps=2, output_type="np")
    images = [_image(seed=1), _image(seed=2)]
    expected = ref(images, **kw, generator=[_gen(1), _gen(2)]).frames
    got = ours(images, **kw, generator=[_gen(1), _gen(2)]).frames
    assert got.shape == expected.shape == (2, 2, 16, 24, 3) and np.abs(got - expected).max() < TOL
    # a tensor in [0, 1] at the encoder's size goes to CLIP as it is (reference rule)
    tensor = torch.rand(1, 3, 224, 224, generator=_gen(4))
    expected = ref(tensor, **kw, generator=_gen(0)).frames
    got = ours(tensor, **kw, generator=_gen(0)).frames
    assert np.abs(got - expected).max() < TOL
    # a (c, h, w) tensor is one image (the reference would take its channels for a batch of 3)
    assert ours(tensor[0], **kw, generator=_gen(0)).frames.shape == (1, 2, 16, 24, 3)
    # a tensor of another size is resized for CLIP too (the reference fails in the encoder)
    assert ours(torch.rand(2, 3, 40, 56), **kw, generator=_gen(0)).frames.shape == (2, 2, 16, 24, 3)


def test_image_path_and_mode_conversions(ref, ours, tmp_path):
    """RGBA is composited over white, greyscale replicated, 16-bit scaled to 8 bits (as vidiff.load_image)."""
    kw = dict(num_frames=2, height=16, width=16, num_inference_steps=3, output_type="latent")
    rgb = np.asarray(_image(48, 32))
    alpha = np.where(np.arange(48)[None, :] < 24, 255, 0).astype(np.uint8).repeat(32, 0)
    rgba = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    over_white = np.where(alpha[..., None] == 255, rgb, 255).astype(np.uint8)
    grey = rgb[..., 0]
    grey16 = Image.fromarray(grey.astype(np.uint16) * 257)
    assert grey16.mode.startswith("I;16")
    rgba.save(tmp_path / "first.png")
    cases = [(rgba, over_white), (str(tmp_path / "first.png"), over_white), (Image.fromarray(grey, "L"), np.dstack([grey] * 3)),
             (grey16, np.dstack([grey] * 3))]
    for given, expected_rgb in cases:
        expected = ref(Image.fromarray(expected_rgb), **kw, generator=_gen(0)).frames
        got = ours(given, **kw, generator=_gen(0)).frames
        assert (got - expected).abs().max() < TOL, type(given)


def test_output_types_return_dict_and_latents(ref, ours):
    kw = dict(num_frames=3, height=16, width=24, num_inference_steps=2)
    latents = torch.randn(1, 3, 4, 8, 12, generator=_gen(5))
    expected = ref(_image(), **kw, latents=latents, generator=_gen(0), output_type="pt").frames
    got = ours(_image(), **kw, latents=latents, generator=_gen(0), output_type="pt").frames
    assert got.shape == expected.shape == (1, 3, 3, 16, 24) and (got - expected).abs().max() < TOL
    pil = ours(_image(), **kw, generator=_gen(0)).frames  # default output_type: PIL
    assert len(pil) == 1 and len(pil[0]) == 3 and pil[0][0].size == (24, 16)
    bare = ours(_image(), **kw, generator=_gen(0), output_type="np", return_dict=False)
    assert isinstance(bare, np.ndarray) and bare.shape == (1, 3, 16, 24, 3)  # the frames themselves, as the reference


def test_batch_of_images_with_several_videos_each_keeps_its_image(ours):
    """Video j of image i is conditioned on image i's latent and embedding (the reference mixes them up)."""
    kw = dict(num_frames=2, height=16, width=16, num_inference_steps=3, noise_aug_strength=0.0, output_type="latent")
    a, b = _image(seed=1), _image(seed=2)
    latents = torch.randn(4, 2, 4, 8, 8, generator=_gen(0))
    both = ours([a, b], num_videos_per_prompt=2, latents=latents, **kw).frames
    only_b = ours(b, num_videos_per_prompt=2, latents=latents[2:], **kw).frames
    only_a = ours(a, latents=latents[:1], **kw).frames
    assert (both[2:] - only_b).abs().max() < 1e-5 and (both[:1] - only_a).abs().max() < 1e-5


def test_decode_chunks_never_mix_videos(ours):
    latents = torch.randn(2, 3, 4, 8, 8, generator=_gen(0))
    whole = ours.decode_latents(latents, 3, 3)
    chunked = ours.decode_latents(latents, 3, 4)  # 4 > 3 frames: still one decode per video
    per_video = torch.cat([ours.decode_latents(latents[i : i + 1], 3, 3) for i in range(2)])
    assert (whole - per_video).abs().max() < 1e-5 and (chunked - whole).abs().max() < 1e-5


def test_callback_on_step_end_and_interrupt(ref, ours):
    def halve(pipe, i, t, kwargs):
        return {"latents": kwargs["latents"] * 0.5} if i == 0 else {}

    kw = dict(num_frames=2, height=16, width=16, num_inference_steps=3, output_type="np", callback_on_step_end=halve,
              callback_on_step_end_tensor_inputs=["latents"])
    expected = ref(_image(), **kw, generator=_gen(0)).frames
    got = ours(_image(), **kw, generator=_gen(0)).frames
    assert np.abs(got - expected).max() < TOL
    seen = []

    def stop(pipe, i, t, kwargs):
        seen.append((i, sorted(kwargs)))
        pipe._interrupt = i == 1
        return {}

    ours(_image(), num_frames=2, height=16, width=16, num_inference_steps=4, output_type="latent", callback_on_step_end=stop)
    assert seen == [(0, ["latents"]), (1, ["latents"])]
    assert ours.num_timesteps == 4 and ours.guidance_scale.shape == (1, 2, 1, 1, 1) and ours.do_classifier_free_guidance


def test_model_cpu_offload_without_accelerator_stays_on_cpu(ours, caplog):
    kw = dict(num_frames=2, height=16, width=16, num_inference_steps=2, output_type="latent")
    plain = ours(_image(), **kw, generator=_gen(0)).frames
    with caplog.at_level(logging.WARNING, logger="vidiff"):
        ours.enable_model_cpu_offload()
    try:
        if torch.cuda.is_available():
            pytest.skip("this machine has an accelerator")
        assert "no accelerator" in caplog.text
        assert (ours(_image(), **kw, generator=_gen(0)).frames - plain).abs().max() == 0
    finally:
        ours.remove_all_hooks()


@pytest.fixture(scope="module")
def fp16_pair(folder):
    kw = dict(torch_dtype=torch.float16)
    ref = diffusers.StableVideoDiffusionPipeline.from_pretrained(folder, **kw)
    ours = vidiff.StableVideoDiffusionPipeline.from_pretrained(folder, **kw)
    for p in (ref, ours):
        p.set_progress_bar_config(disable=True)
    return ref, ours


@pytest.mark.parametrize("force_upcast", [True, False])
def test_float16_honours_force_upcast(fp16_pair, monkeypatch, force_upcast):
    ref, ours = fp16_pair
    ref.vae.register_to_config(force_upcast=force_upcast)
    monkeypatch.setattr(ours.vae, "_config", ours.vae.config.replace(force_upcast=force_upcast))
    seen = []
    real = ours.vae.encode

    def spy(x, *a, **k):
        seen.append((x.dtype, ours.vae.dtype))
        return real(x, *a, **k)

    monkeypatch.setattr(ours.vae, "encode", spy)
    kw = dict(num_frames=2, height=16, width=16, num_inference_steps=2, output_type="np")
    expected = ref(_image(), **kw, generator=_gen(0)).frames
    got = ours(_image(), **kw, generator=_gen(0)).frames
    want = torch.float32 if force_upcast else torch.float16
    assert seen == [(want, want)] and ours.vae.dtype == torch.float16
    assert np.abs(got - expected).max() < 2e-3  # both run fp16 arithmetic: a few fp16 ulps on [0, 1] pixels


def test_nan_during_denoising_names_the_step(ours, monkeypatch):
    real = ours.unet.forward
    monkeypatch.setattr(ours.unet, "forward", lambda *a, **k: (real(*a, **k)[0] * math.nan,))
    with pytest.raises(vidiff.NonFiniteError, match="step 0"):
        ours(_image(), num_frames=2, height=16, width=16, num_inference_steps=2)


# ---------------------------------------------------------------------------------------------- CLIP preprocessing
@pytest.mark.parametrize("hw", [(40, 56), (300, 200), (576, 1024), (224, 224)])
def test_antialiased_resize_matches_reference(hw):
    from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import _resize_with_antialiasing

    x = torch.rand(2, 3, *hw, generator=_gen(0)) * 2 - 1
    expected = _resize_with_antialiasing(x, (224, 224))
    got = image_encoding.resize_with_antialiasing(x, (224, 224))
    assert got.shape == (2, 3, 224, 224) and (got - expected).abs().max() < 1e-6


@pytest.mark.parametrize("size", [(600, 900), (40, 56)])
def test_clip_pixel_values_match_reference_preprocessing(size):
    """The reference's steps for PIL input: [0, 1] -> [-1, 1] -> antialiased resize -> [0, 1] -> the feature extractor's
    normalisation (here with its own, non-default statistics)."""
    from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import _resize_with_antialiasing
    from transformers import CLIPImageProcessor

    fe = CLIPImageProcessor(image_mean=[0.3, 0.5, 0.7], image_std=[0.2, 0.3, 0.4])
    images = [Image.fromarray((np.random.default_rng(i).random((*size, 3)) * 255).astype("uint8")) for i in range(2)]
    x = torch.from_numpy(np.stack([np.asarray(im) for im in images]).astype(np.float32) / 255).permute(0, 3, 1, 2)
    x = (_resize_with_antialiasing(x * 2.0 - 1.0, (224, 224)) + 1.0) / 2.0
    expected = fe(images=x, do_normalize=True, do_center_crop=False, do_resize=False, do_rescale=False, return_tensors="pt").pixel_values
    got = image_encoding.clip_pixel_values(image_encoding.load_images(images), fe, 224)
    assert got.shape == expected.shape == (2, 3, 224, 224) and (got - expected).abs().max() < 1e-5


def test_image_embeddings_match_reference(ref, ours):
    images = [_image(300, 200, seed=1), _image(300, 200, seed=2)]
    for nvpp, cfg in ((1, False), (3, True)):
        expected = ref._encode_image(images, "cpu", nvpp, cfg)
        got = ours._encode_image(images, "cpu", nvpp, cfg)
        assert got.shape == expected.shape == ((2 if cfg else 1) * 2 * nvpp, 1, 32) and (got - expected).abs().max() < 1e-5
    assert (got[:6] == 0).all()


# ---------------------------------------------------------------------------------------------- bad input
BAD = [
    (dict(decode_chunk_size=0), ValueError, "decode_chunk_size"),
    (dict(min_guidance_scale=4.0, max_guidance_scale=3.0), ValueError, "larger than max_guidance_scale"),
    (dict(noise_aug_strength=math.nan), ValueError, "noise_aug_strength must be a finite"),
    (dict(noise_aug_strength=math.inf), ValueError, "noise_aug_strength must be a finite"),
    (dict(noise_aug_strength=-0.1), ValueError, "at least 0"),
    (dict(max_guidance_scale=math.nan), ValueError, "max_guidance_scale must be a finite"),
    (dict(min_guidance_scale=-math.inf), ValueError, "min_guidance_scale must be a finite"),
    (dict(fps=math.nan), ValueError, "fps"),
    (dict(num_frames=0), ValueError, "num_frames"),
    (dict(num_inference_steps=0), ValueError, "num_inference_steps"),
    (dict(num_videos_per_prompt=0), ValueError, "num_videos_per_prompt"),
    (dict(height=17), ValueError, "multiple of"),
    (dict(sigmas=[1.0]), ValueError, "sigmas"),
    (dict(sigmas=[5.0, math.nan, 0.0]), ValueError, "sigmas"),
    (dict(image="/no/such/first.png"), FileNotFoundError, "no such file"),
    (dict(image=["/no/such/first.png"]), FileNotFoundError, "no such file"),
    (dict(image=42), TypeError, "image must be"),
    (dict(image={"a": 1}), TypeError, "image must be"),
    (dict(image=[Image.new("RGB", (8, 8)), 3]), TypeError, r"image\[1\]"),
    (dict(image=[]), ValueError, "empty"),
    (dict(image=None), ValueError, "pass `image`"),
    (dict(image=torch.rand(1, 3, 8, 8) * 2 - 1), ValueError, r"\[0, 1\]"),
    (dict(image=torch.rand(2, 5, 8, 8)), ValueError, "c = 1, 3 or 4"),
    (dict(output_type="gif"), ValueError, "output_type"),
    (dict(latents=torch.zeros(1, 2, 4, 4, 4)), ValueError, "shape"),
    (dict(generator=[torch.Generator(), torch.Generator()]), ValueError, "generators"),
    (dict(callback_on_step_end_tensor_inputs=["image_latents"]), ValueError, "not available"),
]


@pytest.mark.parametrize("bad,error,message", BAD, ids=[f"{i}-{m[:20]}" for i, (_, _, m) in enumerate(BAD)])
def test_bad_input_is_refused_before_work(ours, monkeypatch, bad, error, message):
    def boom(*a, **k):
        raise AssertionError("heavy work started before the input was checked")

    for module, name in ((ours.unet, "forward"), (ours.image_encoder, "forward"), (ours.vae, "encode"), (ours.vae, "decode")):
        monkeypatch.setattr(module, name, boom)
    kw = dict(image=_image(), num_frames=2, height=16, width=16, num_inference_steps=2)
    kw.update(bad)
    with pytest.raises(error, match=message):
        ours(**kw)


# ---------------------------------------------------------------------------------------------- the guide's sample
SVD_SAMPLE = '''
import torch
from diffusers import StableVideoDiffusionPipeline
from diffusers.utils import load_image, export_to_video

pipeline = StableVideoDiffusionPipeline.from_pretrained(
"stabilityai/stable-video-diffusion-img2vid-xt", torch_dtype=torch.float16, variant="fp16"
)
pipeline.enable_model_cpu_offload()

image = load_image("https://huggingface.co/datasets/huggingface/documentation-images/resolve/main/diffusers/svd/rocket.png")
image = image.resize((1024, 576))

generator = torch.manual_seed(42)
frames = pipeline(image, decode_chunk_size=8, generator=generator).frames[0]
export_to_video(frames, "generated.mp4", fps=7)
'''
ROCKET_URL = "https://huggingface.co/datasets/huggingface/documentation-images/resolve/main/diffusers/svd/rocket.png"
# Scaled down, unavoidably: the call's default 576 x 1024 output would take minutes per run even with tiny weights on
# a CPU, so the call gets height=16, width=32 (all else as written: 25 steps, decode_chunk_size=8, num_frames from the
# checkpoint, whose tiny UNet says 10 where SVD-XT says 25, so decoding still runs in chunks of 8 + 2).
SCALED_CALL = ("pipeline(image, decode_chunk_size=8, generator=generator)",
               "pipeline(image, decode_chunk_size=8, generator=generator, height=16, width=32)")


@pytest.fixture(scope="module")
def sample_folder(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("svd_guide")
    # a second architecture: three-level VAE (scale factor 4), per-stage heads
    pipe = ref_svd_pipeline(seed=1, unet=dict(num_frames=10, num_attention_heads=(1, 2)),
                            vae=dict(block_out_channels=(32, 32, 64), down_block_types=("DownEncoderBlock2D",) * 3))
    pipe.save_pretrained(tmp / "svd", variant="fp16")
    return tmp / "svd"


def _rocket_png() -> bytes:
    buf = io.BytesIO()
    _image(160, 120, seed=9).save(buf, format="PNG")
    return buf.getvalue()


def _run_svd_sample(folder, tmp_path, monkeypatch, dtype, scaled=True):
    import vidiff.media.image as media_image

    png = _rocket_png()
    monkeypatch.setattr(media_image, "fetch_bytes", lambda url, what, timeout: png if url == ROCKET_URL else pytest.fail(url))
    monkeypatch.chdir(tmp_path)
    code = SVD_SAMPLE.replace("from diffusers", "from vidiff").replace('"stabilityai/stable-video-diffusion-img2vid-xt"', repr(str(folder)))
    assert "from diffusers" not in code and SCALED_CALL[0] in code
    code = code.replace(*SCALED_CALL) if scaled else code
    if dtype != torch.float16:
        code = code.replace("torch.float16", str(dtype))
    scope: dict = {}
    exec(compile(code, "guide_svd", "exec"), scope)
    assert (tmp_path / "generated.mp4").stat().st_size > 0
    ours = np.stack([np.asarray(f) for f in scope["frames"]])

    ref = diffusers.StableVideoDiffusionPipeline.from_pretrained(folder, torch_dtype=dtype, variant="fp16")
    ref.set_progress_bar_config(disable=True)  # (its enable_model_cpu_offload() needs an accelerator)
    image = Image.open(io.BytesIO(png)).convert("RGB").resize((1024, 576))
    size = dict(height=16, width=32) if scaled else {}
    expected = ref(image, decode_chunk_size=8, generator=torch.manual_seed(42), **size).frames[0]
    expected = np.stack([np.asarray(f) for f in expected])
    assert ours.shape == expected.shape == (10, 16, 32, 3) if scaled else ours.shape == expected.shape
    return np.abs(ours.astype(int) - expected.astype(int)).max()


def test_svd_guide_sample_fp32(sample_folder, tmp_path, monkeypatch):
    """The sample with float32 weights (fp16 arithmetic on a CPU is emulated and slow) and a small frame size.

    Its frames are PIL images (uint8): the same seed must give the same bytes, allowing one level where a value
    sits on a rounding boundary."""
    assert _run_svd_sample(sample_folder, tmp_path, monkeypatch, torch.float32) <= 1


@pytest.mark.slow
def test_svd_guide_sample_fp16(sample_folder, tmp_path, monkeypatch):
    # both sides run the same fp16 arithmetic: allow a few levels of uint8
    assert _run_svd_sample(sample_folder, tmp_path, monkeypatch, torch.float16) <= 3


# ---------------------------------------------------------------------------------------------- CLI
SMALL = ["--frames", "3", "--steps", "2", "--height", "16", "--width", "24", "--quiet"]


def test_cli_generate_from_image_writes_mp4(folder, tmp_path, capsys):
    _image(64, 48).save(tmp_path / "first.png")
    out = tmp_path / "out.mp4"
    argv = ["generate", "--model", str(folder), "--image", str(tmp_path / "first.png"), "--output", str(out), *SMALL,
            "--fps", "6", "--motion-bucket-id", "90", "--noise-aug-strength", "0.05", "--decode-chunk-size", "2",
            "--min-guidance", "1.5", "--max-guidance", "2.5"]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == str(out)
    frames = vidiff.load_video(str(out))
    assert len(frames) == 3 and frames[0].size == (24, 16)


@pytest.fixture()
def t2v_index(tmp_path):
    """A folder that says text-to-video: the CLI refuses --image from model_index.json before loading anything."""
    (tmp_path / "t2v").mkdir()
    (tmp_path / "t2v" / "model_index.json").write_text(json.dumps({"_class_name": "TextToVideoSDPipeline"}))
    return tmp_path / "t2v"


@pytest.mark.parametrize("args,needle", [
    ([], "pass --image"),
    (["--image", "{tmp}/none.png"], "no such file"),
    (["--image", "{tmp}/first.png", "--prompt", "a cat"], "takes no --prompt"),
    (["--image", "{tmp}/first.png", "--min-guidance", "3", "--max-guidance", "2"], "larger than --max-guidance"),
    (["--image", "{tmp}/first.png", "--noise-aug-strength", "nan"], "finite"),
    (["--image", "{tmp}/first.png", "--height", "12"], "multiple of 8"),
    (["--image", "{t2v}/../first.png", "--model", "{t2v}"], "needs an image-to-video checkpoint"),
    (["--model", "{t2v}", "--motion-bucket-id", "3", "--prompt", "x"], "--motion-bucket-id needs an image-to-video"),
])
def test_cli_bad_input_is_one_line(folder, tmp_path, t2v_index, capsys, args, needle):
    _image().save(tmp_path / "first.png")
    args = [a.format(tmp=tmp_path, t2v=t2v_index) for a in args]
    out = tmp_path / "o.mp4"
    assert main(["generate", "--model", str(folder), *args, "--quiet", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vidiff: error:") and needle in err and "\n" not in err
    assert not out.exists()
