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
