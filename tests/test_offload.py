"""Model CPU offload without a GPU: the hooks' device moves follow the pipeline order and outputs are unchanged."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch

import vidiff
from tiny import ref_t2v_pipeline
from vidiff.runtime import offload

warnings.filterwarnings("ignore", category=FutureWarning)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("off")
    ref_t2v_pipeline(tmp).save_pretrained(tmp / "p")
    return tmp / "p"


def _run(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe(prompt="a", num_frames=2, height=16, width=16, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).frames


def test_no_accelerator_is_a_notice_not_a_crash(folder, caplog, monkeypatch):
    monkeypatch.setattr(offload, "accelerator_device", lambda *a, **k: None)
    pipe = vidiff.DiffusionPipeline.from_pretrained(folder)
    base = _run(pipe)
    with caplog.at_level(logging.WARNING, logger="vidiff"):
        pipe.enable_model_cpu_offload()
        pipe.enable_sequential_cpu_offload()
    assert sum("no accelerator" in r.message for r in caplog.records) == 2
    assert np.array_equal(_run(pipe), base)


def test_model_offload_moves_components_in_pipeline_order(folder, monkeypatch):
    # pretend the CPU is the accelerator so the hooks install; record every .to() they make
    monkeypatch.setattr(offload, "accelerator_device", lambda *a, **k: torch.device("cpu"))
    pipe = vidiff.DiffusionPipeline.from_pretrained(folder)
    base = _run(pipe)
    pipe.enable_model_cpu_offload()
    assert pipe._execution_device == torch.device("cpu")
    moves: list[str] = []
    for name in ("text_encoder", "unet", "vae"):
        module = pipe.components[name]
        real_to = module.to

        def to(*args, _name=name, _real=real_to, **kwargs):
            moves.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, "to", to)
    out = _run(pipe)
    assert np.array_equal(out, base)
    # order of first appearance: text encoder, then unet, then vae (which it reaches through vae.decode)
    first = list(dict.fromkeys(moves))
    assert first == ["text_encoder", "unet", "vae"]
    pipe.remove_all_hooks()
    assert "decode" not in pipe.vae.__dict__
