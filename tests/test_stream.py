"""Weight streaming (vidiff.runtime.stream): memory-mapped weights leave the process's resident memory after their
layer runs, the frames stay the same to the bit, and weights changed in memory keep their changes."""

from __future__ import annotations

import logging
import sys
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import vidiff
from test_runtime import _load, _run  # (their folders: tests/conftest.py's session-wide `folders`)
from vidiff.runtime import stream

warnings.filterwarnings("ignore")
pytestmark = pytest.mark.skipif(not stream.supported(), reason="weight streaming needs Linux's /proc/self/pagemap")


def resident_pages(tensors) -> int:
    """How many pages of these tensors' memory are in the process's resident set (from /proc/self/pagemap)."""
    pagemap, n = stream.Pagemap(), 0
    try:
        for first, end in stream._merge(p for t in tensors if (p := stream._pages(t)) is not None):
            n += int(((pagemap.entries(first, end) >> np.uint64(63)) & np.uint64(1)).sum())
    finally:
        pagemap.close()
    return n


def weights(module: torch.nn.Module) -> list[torch.Tensor]:
    return list(module.parameters()) + list(module.buffers())


def touch(tensors) -> None:
    for t in tensors:
        float(t.double().sum())


# ---------------------------------------------------------------------------------------------- pipelines
@pytest.mark.parametrize("name", ["TextToVideoSDPipeline", "StableVideoDiffusionPipeline", "I2VGenXLPipeline",
                                  "AnimateDiffPipeline", "TextToVideoZeroPipeline", "TextToVideoZeroControlNetPipeline"])
def test_streamed_runs_give_the_same_frames_and_hand_the_weights_back(folders, name):
    pipe = _load(folders, name)
    base = _run(pipe, name)
    unet = weights(pipe.unet)
    resident = resident_pages(unet)
    assert resident > 0.9 * stream.mapped_bytes(unet) / stream._page_size()  # a plain run leaves every page resident

    pipe.enable_weight_streaming()
    assert stream.mapped_bytes(unet) > 0.99 * sum(t.numel() * t.element_size() for t in unet)  # loaded mapped, not copied
    assert resident_pages(unet) == 0  # enabling hands them back at once
    seen: list[int] = []
    hook = pipe.unet.register_forward_hook(lambda m, a, o: seen.append(resident_pages(unet)))  # runs after streaming's
    got = _run(pipe, name)
    hook.remove()
    assert np.array_equal(got, base)
    assert seen and max(seen) == 0 and resident_pages(unet) == 0
    assert pipe._streaming["unet"].released > 0

    pipe.disable_weight_streaming()
    assert np.array_equal(_run(pipe, name), base)
    assert resident_pages(unet) >= 0.9 * resident


def _mapped_mlp(tmp_path, n: int = 6, width: int = 512) -> torch.nn.Sequential:
    """n Linear(width, width) layers (1 MiB weights) whose tensors are memory-mapped from a safetensors file."""
    from vidiff.loading.weights import load_state_dict

    torch.manual_seed(0)
    model = torch.nn.Sequential(*(torch.nn.Linear(width, width) for _ in range(n))).requires_grad_(False)
    save_file(model.state_dict(), tmp_path / "mlp.safetensors")
    model.load_state_dict(load_state_dict(tmp_path / "mlp.safetensors"), assign=True)
    return model


@pytest.mark.parametrize("batch_layers", [1, 3])
def test_layers_hand_their_weights_back_as_the_model_runs(tmp_path, monkeypatch, batch_layers):
    """Within one call the layers' weights leave the resident set in batches of ``BATCH_BYTES`` as they finish
    (here one or three layers of 1 MiB). The kernel maps a faulting page's neighbours along with it (fault-around,
    64 KiB by default), so pages next to the running layer's weights in the file may come back too: at most 32
    of a finished layer's 257 here."""
    monkeypatch.setattr(stream, "BATCH_BYTES", batch_layers * (512 * 512 + 512) * 4)
    model = _mapped_mlp(tmp_path)
    x = torch.randn(4, 512)
    want = model(x)
    streaming = stream.enable_weight_streaming(model)
    seen = []
    for i, layer in enumerate(model):
        layer.register_forward_pre_hook(lambda m, a, i=i: seen.append([resident_pages(weights(model[j])) for j in range(i)]))
    assert torch.equal(model(x), want)
    for i, finished in enumerate(seen):
        handed_back = i // batch_layers * batch_layers  # layers whose batch was complete when layer i started
        assert all(n <= 32 for n in finished[:handed_back]), seen
        assert all(n >= 250 for n in finished[handed_back:]), seen  # the batch still running keeps its pages
    assert resident_pages(weights(model)) == 0 and streaming.released >= 6 * (1 << 20)
    streaming.remove()


def test_streaming_is_enabled_once_and_follows_a_replaced_component(folders):
    pipe = _load(folders, "TextToVideoSDPipeline")
    pipe.enable_weight_streaming()
    first = pipe._streaming["unet"]
    n_hooks = sum(len(m._forward_hooks) for m in pipe.unet.modules())
    pipe.enable_weight_streaming()
    assert pipe._streaming["unet"] is first and sum(len(m._forward_hooks) for m in pipe.unet.modules()) == n_hooks

    old = pipe.unet
    pipe.unet = vidiff.UNet3DConditionModel.from_pretrained(folders["t2v"] / "unet")
    pipe.enable_weight_streaming()
    assert pipe._streaming["unet"].model is pipe.unet and not any(m._forward_hooks for m in old.modules())
    pipe.disable_weight_streaming()
    assert not any(m._forward_hooks for m in pipe.unet.modules()) and not pipe._streaming


def test_streaming_keeps_the_geglu_column_blocks(folders, monkeypatch):
    """Streaming's hooks change no value, so GEGLU still runs its projection in column blocks (a hook it cannot see
    through would make it call the layer, which rounds differently)."""
    from vidiff.runtime import chunking

    pipe = _load(folders, "TextToVideoZeroPipeline")
    pipe.enable_weight_streaming()
    calls = []
    real = chunking.gated_gelu
    monkeypatch.setattr("vidiff.layers.transformers.gated_gelu", lambda *a: (calls.append(1), real(*a))[1])
    _run(pipe, "TextToVideoZeroPipeline")
    assert calls
    proj = next(m for m in pipe.unet.modules() if type(m).__name__ == "GEGLU").proj
    assert chunking.plain_linear(proj, torch.zeros(1, proj.in_features))
    proj.register_forward_hook(lambda m, a, o: None)  # an ordinary hook still counts
    assert not chunking.plain_linear(proj, torch.zeros(1, proj.in_features))


# ---------------------------------------------------------------------------------------------- what is kept
def _mapped_linear(tmp_path, n: int = 1 << 16) -> torch.nn.Linear:
    """An nn.Linear whose weight is a memory-mapped safetensors tensor (as vidiff's from_pretrained loads them)."""
    from vidiff.loading.weights import load_state_dict

    torch.manual_seed(0)
    save_file({"weight": torch.randn(n // 64, 64), "bias": torch.randn(n // 64)}, tmp_path / "w.safetensors")
    layer = torch.nn.Linear(64, n // 64)
    state = load_state_dict(tmp_path / "w.safetensors")
    layer.weight, layer.bias = torch.nn.Parameter(state["weight"], requires_grad=False), torch.nn.Parameter(state["bias"], requires_grad=False)
    return layer


def test_weights_written_in_memory_keep_their_values(tmp_path):
    """A weight changed in place after loading (its changed pages are private copies) is not handed back: the
    change survives, while the pages that still hold the file's values are handed back."""
    layer = _mapped_linear(tmp_path)
    original = layer.weight.detach().clone()
    page_rows = stream._page_size() // (64 * 4)
    with torch.no_grad():
        layer.weight[: 4 * page_rows].mul_(2.0)  # about four pages written
    want = original.clone()
    want[: 4 * page_rows] *= 2.0
    x = torch.randn(3, 64)
    expect = torch.nn.functional.linear(x, want, layer.bias.detach().clone())
    streaming = stream.enable_weight_streaming(layer)
    assert torch.equal(layer.weight, want)
    got = layer(x)
    kept = resident_pages([layer.weight])  # (counted before anything reads the file's pages next to the weight:
    assert 4 <= kept <= 5  # the kernel maps those along with a faulting page) the written pages, not the rest
    assert torch.equal(got, expect)
    touch([layer.weight])
    assert resident_pages([layer.weight]) > kept
    layer(x)
    assert resident_pages([layer.weight]) == kept and torch.equal(layer.weight, want)
    streaming.remove()


def test_weights_not_mapped_from_a_file_are_left_alone(tmp_path, caplog):
    layer = torch.nn.Linear(64, 1024)  # built in memory
    before = layer.weight.detach().clone()
    with caplog.at_level(logging.WARNING, logger="vidiff"):
        streaming = stream.enable_weight_streaming(layer)
    assert "saves no memory" in caplog.text
    layer(torch.randn(2, 64))
    assert streaming.released == 0 and torch.equal(layer.weight, before) and resident_pages([layer.weight]) > 0
    streaming.remove()

    cast = _mapped_linear(tmp_path).to(torch.float64)  # a cast at load makes a copy in memory
    assert stream.mapped_bytes(weights(cast)) == 0


def test_streaming_is_refused_with_a_warning_where_unsupported(monkeypatch, caplog, folders):
    monkeypatch.setattr(stream, "supported", lambda: False)
    pipe = _load(folders, "TextToVideoSDPipeline")
    with caplog.at_level(logging.WARNING, logger="vidiff"):
        pipe.enable_weight_streaming()
    assert "needs Linux" in caplog.text and not pipe._streaming
    assert not any(m._forward_hooks for m in pipe.unet.modules())


def test_a_compiled_model_is_refused_with_a_warning(tmp_path, caplog):
    compiled = torch.compile(_mapped_mlp(tmp_path, n=2))
    with caplog.at_level(logging.WARNING, logger="vidiff"):
        assert stream.enable_weight_streaming(compiled) is None
    assert "torch.compile" in caplog.text and not any(m._forward_hooks for m in compiled.modules())


def test_release_skips_swapped_and_absent_pages(tmp_path, monkeypatch):
    """Only present, file-backed pages are handed back: a pagemap that says "swapped" or "anonymous" stops it."""
    layer = _mapped_linear(tmp_path)
    touch([layer.weight])
    pm = stream.Pagemap()
    first, end = stream._pages(layer.weight)
    real = pm.entries(first, end)
    assert ((real >> np.uint64(61)) & np.uint64(1)).all()  # file-backed
    for fake in (np.uint64(1 << 62), np.uint64(1 << 63)):  # swapped; present but anonymous
        monkeypatch.setattr(pm, "entries", lambda a, b, fake=fake: np.full(b - a, fake, dtype=np.uint64))
        assert stream.release([layer.weight], pm) == 0
    monkeypatch.undo()
    assert stream.release([layer.weight], pm) >= (end - first - 2) * stream._page_size()
    assert resident_pages([layer.weight]) == 0
    pm.close()
    assert sys.platform.startswith("linux")


# ---------------------------------------------------------------------------------------------- mapping again
def test_remap_maps_unmodified_file_tensors_again_without_a_copy(tmp_path):
    layer = _mapped_linear(tmp_path)
    with torch.no_grad():
        layer.bias[:1].add_(1.0)  # written in place: no longer the file's values
    fresh = torch.randn(8)
    again = stream.remap({"weight": layer.weight.detach(), "bias": layer.bias.detach(), "fresh": fresh})
    assert set(again) == {"weight"}  # the written bias and the in-memory tensor are left to the caller to copy
    w = again["weight"]
    assert w.data_ptr() != layer.weight.data_ptr() and resident_pages([w]) == 0  # its own mapping, nothing read yet
    assert torch.equal(w, layer.weight) and stream.mapped_bytes([w]) > 0
    with torch.no_grad():
        w[0].zero_()  # independent: a write to one leaves the other
    assert not torch.equal(w[0], layer.weight[0]) and torch.equal(w[1:], layer.weight[1:])


def test_animatediff_motion_modules_are_mapped_from_the_adapter_file_not_copied(folders):
    pipe = _load(folders, "AnimateDiffPipeline")
    unet_motion = dict(pipe.unet.named_parameters())
    adapter = dict(pipe.motion_adapter.named_parameters())
    motion = [t for k, t in unet_motion.items() if ".motion_modules." in k]
    assert motion and stream.mapped_bytes(motion) >= sum(t.numel() * t.element_size() for t in motion)
    key = next(k for k in unet_motion if ".motion_modules." in k)  # independent of the adapter's own tensors
    before = adapter[key].detach().clone()
    with torch.no_grad():
        unet_motion[key].add_(1.0)
    assert torch.equal(adapter[key], before) and not torch.equal(unet_motion[key], before)


def test_a_cast_at_load_hands_the_file_pages_back(tmp_path, monkeypatch):
    """Loading float32 files as bfloat16: each source tensor's mapped pages leave the resident set once it is cast
    (the files stay mapped until the load ends, and would otherwise hold every page read), values unchanged."""
    from vidiff.loading.weights import load_state_dict

    torch.manual_seed(0)
    tensors = {f"w{i}": torch.randn(256, 1024) for i in range(4)}
    save_file(tensors, tmp_path / "w.safetensors")
    after: list[int] = []
    real = stream.release
    monkeypatch.setattr(stream, "release", lambda ts, pm, *a: (n := real(ts, pm, *a), after.append(resident_pages(ts)))[0])
    state = load_state_dict(tmp_path / "w.safetensors", dtype=torch.bfloat16)
    assert after == [0, 0, 0, 0]
    assert all(torch.equal(state[k], v.to(torch.bfloat16)) for k, v in tensors.items())
    after.clear()
    load_state_dict(tmp_path / "w.safetensors")  # no cast: the mapped tensors are the result, nothing is handed back
    assert after == []
