"""Pipeline-level loading: model_index.json, variants, hub cache resolution offline, overrides, errors."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import torch

import vidiff
from tiny import ref_t2v_pipeline

warnings.filterwarnings("ignore", category=FutureWarning)


@pytest.fixture(scope="module")
def ref_pipe(tmp_path_factory):
    return ref_t2v_pipeline(tmp_path_factory.mktemp("ref"))


@pytest.fixture(scope="module")
def folder(ref_pipe, tmp_path_factory):
    out = tmp_path_factory.mktemp("saved") / "pipe"
    ref_pipe.save_pretrained(out)
    return out


def _frames(pipe, **kw):
    pipe.set_progress_bar_config(disable=True)
    args = dict(prompt="a cat", num_frames=2, height=16, width=16, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    args.update(kw)
    return pipe(**args).frames


def _fake_hub_cache(folder, cache, repo="org/tiny-t2v", sha="0123456789abcdef0123456789abcdef01234567"):
    root = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(folder, root / "snapshots" / sha)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(sha)
    return repo


def test_hub_id_resolves_from_cache_offline(folder, tmp_path, monkeypatch):
    repo = _fake_hub_cache(folder, tmp_path / "cache")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = vidiff.DiffusionPipeline.from_pretrained(repo, cache_dir=tmp_path / "cache")
    local = vidiff.DiffusionPipeline.from_pretrained(folder)
    assert np.abs(_frames(pipe) - _frames(local)).max() == 0


def test_hub_id_not_cached_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="cache"):
        vidiff.DiffusionPipeline.from_pretrained("org/not-there", cache_dir=tmp_path)


def test_fp16_variant_pipeline(ref_pipe, tmp_path):
    ref_pipe.save_pretrained(tmp_path / "v", variant="fp16")
    names = sorted(p.name for p in (tmp_path / "v" / "unet").iterdir())
    assert "diffusion_pytorch_model.fp16.safetensors" in names
    pipe = vidiff.DiffusionPipeline.from_pretrained(tmp_path / "v", variant="fp16", torch_dtype=torch.float16)
    assert pipe.unet.dtype == torch.float16 and pipe.vae.dtype == torch.float16 and pipe.text_encoder.dtype == torch.float16
    with pytest.raises(Exception, match="fp16|variant"):
        vidiff.DiffusionPipeline.from_pretrained(tmp_path / "v")  # only fp16 files exist: the error names the variant


def test_component_override_and_class_choice(folder):
    unet = vidiff.UNet3DConditionModel.from_pretrained(folder, subfolder="unet")
    scheduler = vidiff.DPMSolverMultistepScheduler.from_pretrained(folder, subfolder="scheduler")
    pipe = vidiff.TextToVideoSDPipeline.from_pretrained(folder, unet=unet, scheduler=scheduler)
    assert pipe.unet is unet and isinstance(pipe.scheduler, vidiff.DPMSolverMultistepScheduler)
    v2v = vidiff.VideoToVideoSDPipeline.from_pretrained(folder)
    assert type(v2v) is vidiff.VideoToVideoSDPipeline


def test_guide_scheduler_swap_from_pretrained(folder):
    s = vidiff.DDIMScheduler.from_pretrained(folder, subfolder="scheduler", clip_sample=False, timestep_spacing="linspace",
                                             beta_schedule="linear", steps_offset=1)
    assert s.config.timestep_spacing == "linspace" and s.config.beta_schedule == "linear" and s.config.steps_offset == 1


def test_unknown_pipeline_class_is_a_clear_error(folder, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    index = json.loads((bad / "model_index.json").read_text())
    index["_class_name"] = "NoSuchPipeline"
    (bad / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="NoSuchPipeline"):
        vidiff.DiffusionPipeline.from_pretrained(bad)


def test_unknown_component_class_is_a_clear_error(folder, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    index = json.loads((bad / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "NoSuchScheduler"]
    (bad / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="NoSuchScheduler"):
        vidiff.DiffusionPipeline.from_pretrained(bad)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        vidiff.DiffusionPipeline.from_pretrained(tmp_path / "nope")


def test_truncated_unet_weights_name_the_file(folder, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    w = bad / "unet" / "diffusion_pytorch_model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(Exception, match="diffusion_pytorch_model.safetensors"):
        vidiff.DiffusionPipeline.from_pretrained(bad)
