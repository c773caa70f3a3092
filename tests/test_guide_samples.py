"""The guide's code samples, run with only `diffusers` -> `vidiff` changed (model ids -> folders the reference saved)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from tiny import ref_t2v_pipeline

warnings.filterwarnings("ignore", category=FutureWarning)

MODELSCOPE_SAMPLE = '''
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import export_to_video

pipeline = DiffusionPipeline.from_pretrained("damo-vilab/text-to-video-ms-1.7b", torch_dtype=torch.float16, variant="fp16")
pipeline.enable_model_cpu_offload()
pipeline.enable_vae_slicing()

prompt = "Confident teddy bear surfer rides the wave in the tropics"
video_frames = pipeline(prompt).frames[0]
export_to_video(video_frames, "modelscopet2v.mp4", fps=10)
'''


def _as_vidiff(code: str, model_id: str, folder) -> str:
    return code.replace("from diffusers", "from vidiff").replace(f'"{model_id}"', repr(str(folder)))


@pytest.fixture(scope="module")
def fp16_folder(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("guide")
    pipe = ref_t2v_pipeline(tmp)
    pipe.save_pretrained(tmp / "ms", variant="fp16")
    return tmp / "ms"


def _run_modelscope_sample(folder, tmp_path, monkeypatch, dtype):
    import diffusers

    monkeypatch.chdir(tmp_path)
    code = _as_vidiff(MODELSCOPE_SAMPLE, "damo-vilab/text-to-video-ms-1.7b", folder)
    assert "diffusers" not in code
    if dtype != torch.float16:
        code = code.replace("torch.float16", str(dtype))
    scope: dict = {}
    torch.manual_seed(0)
    exec(compile(code, "guide_modelscope", "exec"), scope)
    assert (tmp_path / "modelscopet2v.mp4").stat().st_size > 0
    ours = scope["video_frames"]

    ref = diffusers.DiffusionPipeline.from_pretrained(folder, torch_dtype=dtype, variant="fp16")
    ref.vae.enable_slicing()  # the reference removed pipe.enable_vae_slicing(); its offload needs an accelerator
    ref.set_progress_bar_config(disable=True)
    torch.manual_seed(0)
    expected = ref("Confident teddy bear surfer rides the wave in the tropics").frames[0]
    assert ours.shape == expected.shape == (16, 16, 16, 3)
    return np.abs(ours - expected).max()


def test_modelscope_sample_fp32(fp16_folder, tmp_path, monkeypatch):
    """The sample as written but with float32 weights (fp16 arithmetic on a CPU is emulated and slow)."""
    assert _run_modelscope_sample(fp16_folder, tmp_path, monkeypatch, torch.float32) < 1e-4


@pytest.mark.slow
def test_modelscope_sample_verbatim_fp16(fp16_folder, tmp_path, monkeypatch):
    # both sides run the same fp16 arithmetic; allow a few fp16 ulps on [0, 1] pixels
    assert _run_modelscope_sample(fp16_folder, tmp_path, monkeypatch, torch.float16) < 2e-3


# diffusers' text-to-video docs, Zeroscope: 576w text-to-video, then XL video-to-video upscaling.
ZEROSCOPE_SAMPLE = '''
import torch
from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler
from diffusers.utils import export_to_video
from PIL import Image

pipe = DiffusionPipeline.from_pretrained("cerspense/zeroscope_v2_576w", torch_dtype=torch.float32)
pipe.enable_model_cpu_offload()

# memory optimization
pipe.unet.enable_forward_chunking(chunk_size=1, dim=1)
pipe.enable_vae_slicing()

prompt = "Darth Vader surfing a wave"
video_frames = pipe(prompt, num_frames=3, num_inference_steps=3).frames[0]
video_path = export_to_video(video_frames)

pipe = DiffusionPipeline.from_pretrained("cerspense/zeroscope_v2_XL", torch_dtype=torch.float32)
pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
pipe.enable_model_cpu_offload()

# memory optimization
pipe.unet.enable_forward_chunking(chunk_size=1, dim=1)
pipe.enable_vae_slicing()

video = [Image.fromarray((frame * 255).round().astype("uint8")).resize((24, 16)) for frame in video_frames]

video_frames = pipe(prompt, video=video, strength=0.6, num_inference_steps=5).frames[0]
'''


def test_zeroscope_sample_matches_reference(tmp_path, monkeypatch):
    """The docs' Zeroscope sample with the import changed. Scaled for a CPU test: float32 instead of float16,
    num_frames=3 instead of 24, 3 / 5 steps instead of 50, a 24x16 upscale instead of 1024x576, and the float frames quantised before
    Image.fromarray (the docs' code predates float frames; both libraries need it)."""
    import diffusers

    from tiny import clip_text_encoder, clip_tokenizer, ref_unet3d, ref_vae

    def folder(name, cls, seed):
        pipe = cls(vae=ref_vae(seed), text_encoder=clip_text_encoder(seed), tokenizer=clip_tokenizer(tmp_path / name),
                   unet=ref_unet3d(seed), scheduler=diffusers.DDIMScheduler(beta_schedule="scaled_linear", clip_sample=False))
        pipe.save_pretrained(tmp_path / name)
        return tmp_path / name

    small = folder("576w", diffusers.TextToVideoSDPipeline, 0)
    xl = folder("xl", diffusers.VideoToVideoSDPipeline, 1)
    monkeypatch.chdir(tmp_path)
    results = {}
    for lib in ("vidiff", "diffusers"):
        code = ZEROSCOPE_SAMPLE.replace('"cerspense/zeroscope_v2_576w"', repr(str(small))).replace('"cerspense/zeroscope_v2_XL"', repr(str(xl)))
        if lib == "vidiff":
            code = code.replace("from diffusers", "from vidiff")
        else:  # the reference needs an accelerator for offload and dropped pipe.enable_vae_slicing()
            code = code.replace("pipe.enable_model_cpu_offload()", "").replace("pipe.enable_vae_slicing()", "pipe.vae.enable_slicing()")
            code = code.replace("video_path = export_to_video(video_frames)", "")  # its exporter needs OpenCV
        scope: dict = {}
        torch.manual_seed(0)
        exec(compile(code, f"zeroscope_{lib}", "exec"), scope)
        results[lib] = scope["video_frames"]
        if lib == "vidiff":
            from pathlib import Path

            assert Path(scope["video_path"]).stat().st_size > 0
    assert results["vidiff"].shape == results["diffusers"].shape == (3, 16, 24, 3)
    assert np.abs(results["vidiff"] - results["diffusers"]).max() < 1e-4
