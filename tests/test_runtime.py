"""Runtime features on every pipeline class: model / sequential CPU offload (with the CPU standing in for the
accelerator), forward chunking, attention slicing, VAE slicing / tiling, decode chunks, and torch.compile."""

from __future__ import annotations

import warnings

import numpy as np
import PIL.Image
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import vidiff
from vidiff.runtime import offload

warnings.filterwarnings("ignore")
CHUNK_TOL = 1e-5


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _photos(n: int, h: int = 16, w: int = 16, seed: int = 0) -> list[PIL.Image.Image]:
    rng = np.random.default_rng(seed)
    return [PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for _ in range(n)]


# `folders` (one folder per component set) is tests/conftest.py's, shared with tests/test_stream.py


# pipeline class -> (folder, tiny call). Every pipeline class vidiff exports is here (checked below).
CASES = {
    "TextToVideoSDPipeline": ("t2v", dict(prompt="a", num_frames=2, height=16, width=16, num_inference_steps=2)),
    "VideoToVideoSDPipeline": ("t2v", dict(prompt="a", video=_photos(2), num_inference_steps=2, strength=0.9)),
    "StableVideoDiffusionPipeline": ("svd", dict(image=_photos(1)[0], num_frames=3, height=16, width=16, num_inference_steps=2)),
    "I2VGenXLPipeline": ("i2vgen", dict(prompt="a", image=_photos(1, 32, 32)[0], num_frames=2, height=16, width=16, num_inference_steps=2)),
    "AnimateDiffPipeline": ("animatediff", dict(prompt="a", num_frames=2, height=16, width=16, num_inference_steps=2)),
    "AnimateDiffVideoToVideoPipeline": ("animatediff", dict(prompt="a", video=_photos(2), num_inference_steps=2)),
    "StableDiffusionPipeline": ("sd", dict(prompt="a", height=16, width=16, num_inference_steps=2)),
    "StableDiffusionInstructPix2PixPipeline": ("p2p", dict(prompt="a", image=_photos(1)[0], num_inference_steps=2)),
    "StableDiffusionControlNetPipeline": ("cn", dict(prompt="a", image=_photos(1)[0], num_inference_steps=2)),
    "TextToVideoZeroPipeline": ("sd", dict(prompt="a", video_length=2, height=16, width=16, num_inference_steps=3, t0=0, t1=1)),
    "TextToVideoZeroControlNetPipeline": ("cn", dict(prompt="a", control_frames=_photos(2), num_inference_steps=2)),
    "TextToVideoZeroPix2PixPipeline": ("p2p", dict(prompt="a", video=_photos(2), num_inference_steps=2)),
}


def test_every_pipeline_class_is_covered():
    exported = {n for n, m in vidiff._EXPORTS.items() if m.startswith("pipelines") and n.endswith("Pipeline") and n != "DiffusionPipeline"}
    assert exported == set(CASES), f"add the new pipeline(s) to CASES: {sorted(exported ^ set(CASES))}"


def _load(folders, name: str):
    folder = folders[CASES[name][0]]
    if isinstance(folder, tuple):  # AnimateDiff: SD folder + motion adapter
        pipe = getattr(vidiff, name).from_pretrained(folder[0], motion_adapter=vidiff.MotionAdapter.from_pretrained(folder[1]))
    else:
        pipe = getattr(vidiff, name).from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run(pipe, name: str, **extra):
    torch.manual_seed(0)  # I2VGenXL (as the reference) draws some noise from the global generator
    out = pipe(**{**CASES[name][1], **extra}, generator=_gen(0), output_type="np")
    return np.asarray(out.frames if hasattr(out, "frames") else out.images)


# ---------------------------------------------------------------------------------------------- offload
@pytest.mark.parametrize("name", sorted(CASES))
def test_offload_hooks_install_in_order_and_leave_outputs_unchanged(folders, name, monkeypatch):
    monkeypatch.setattr(offload, "accelerator_device", lambda *a, **k: torch.device("cpu"))  # the CPU plays the GPU
    pipe = _load(folders, name)
    base = _run(pipe, name)
    modules = {n: m for n, m in pipe.components.items() if isinstance(m, torch.nn.Module) and n not in pipe._exclude_from_cpu_offload}

    pipe.enable_model_cpu_offload()
    hooks = pipe._offload_hooks
    order = [next(n for n, m in modules.items() if m is h.module) for h in hooks]
    seq = [s for s in pipe.model_cpu_offload_seq.split("->") if s in modules]
    assert order[: len(seq)] == seq and sorted(order) == sorted(modules)
    assert all(h.previous is p for h, p in zip(hooks[1:], hooks[:-1]))  # each hook sends the previous component home
    onloaded: list[str] = []
    real_call = offload.ModelOffloadHook.__call__

    def record(self, module, args):
        onloaded.append(next(n for n, m in modules.items() if m is module))
        return real_call(self, module, args)

    monkeypatch.setattr(offload.ModelOffloadHook, "__call__", record)
    assert np.array_equal(_run(pipe, name), base)
    assert {"unet", "vae"} <= set(onloaded) and set(onloaded) <= set(modules)
    assert onloaded.index("unet") < len(onloaded) - 1 - onloaded[::-1].index("vae")  # the VAE decodes after the UNet
    monkeypatch.setattr(offload.ModelOffloadHook, "__call__", real_call)

    pipe.enable_sequential_cpu_offload()
    leaves = [leaf for m in modules.values() for leaf in m.modules()
              if next(leaf.children(), None) is None and any(True for _ in leaf.parameters(recurse=False))]
    assert len(pipe._offload_hooks) == 2 * len(leaves)
    moved: list[int] = []
    real_to = torch.nn.Module.to
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: (moved.append(id(self)), real_to(self, *a, **k))[1])
    # every leaf is hooked now, so GEGLU's projection runs as one module call instead of column blocks
    # (runtime.chunking.gated_gelu on unhooked CPU layers): the same values up to float32 rounding (2.8e-6 seen)
    np.testing.assert_allclose(_run(pipe, name), base, rtol=0, atol=1e-5)
    monkeypatch.setattr(torch.nn.Module, "to", real_to)
    assert moved.count(id(pipe.unet.conv_in)) >= 2 and moved.count(id(pipe.unet.conv_in)) % 2 == 0  # on, off per step
    pipe.remove_all_hooks()
    assert pipe._execution_device == torch.device("cpu") and not pipe._offload_hooks


# ---------------------------------------------------------------------------------------------- chunking
def _close(a, b) -> None:
    assert a.shape == b.shape and np.abs(a - b).max() <= CHUNK_TOL, np.abs(a - b).max()


@pytest.mark.parametrize("name", ["TextToVideoSDPipeline", "StableVideoDiffusionPipeline", "AnimateDiffPipeline"])
def test_forward_chunking_and_attention_slicing_give_the_same_frames(folders, name):
    pipe = _load(folders, name)
    base = _run(pipe, name)
    for dim, size in ((0, 1), (1, 1)):
        pipe.enable_forward_chunking(chunk_size=size, dim=dim)
        _close(_run(pipe, name), base)
    pipe.disable_forward_chunking()
    pipe.enable_attention_slicing(1)
    _close(_run(pipe, name), base)
    pipe.disable_attention_slicing()
    assert np.array_equal(_run(pipe, name), base)


def test_bad_forward_chunking_is_refused(folders):
    pipe = _load(folders, "TextToVideoSDPipeline")
    with pytest.raises(ValueError, match="dim"):
        pipe.enable_forward_chunking(chunk_size=1, dim=2)


@pytest.mark.parametrize("name", ["TextToVideoSDPipeline", "StableVideoDiffusionPipeline"])
def test_vae_slicing_tiling_and_decode_chunks_give_the_same_frames(folders, name):
    pipe = _load(folders, name)
    base = _run(pipe, name)
    pipe.enable_vae_slicing()
    _close(_run(pipe, name), base)
    pipe.disable_vae_slicing()
    if not isinstance(pipe.vae, vidiff.AutoencoderKLTemporalDecoder):  # SVD's decoder mixes the frames of a chunk
        _close(_run(pipe, name, decode_chunk_size=1), base)
    if isinstance(pipe.vae, vidiff.AutoencoderKL):
        # tiles as large as the whole latent: the tiled path runs and must give the untiled frames
        pipe.vae.enable_tiling(tile_sample_min_size=16, tile_latent_min_size=8)
        _close(_run(pipe, name), base)
        pipe.vae.disable_tiling()


# ---------------------------------------------------------------------------------------------- compile
def _compiled_steps(pipe, name: str, steps: int) -> tuple[np.ndarray, dict]:
    """Compile the UNet with fullgraph=True (a graph break is an error), run ``steps`` denoising steps with a
    recompile limit of 1 (a recompilation is an error); return the frames and dynamo's counters."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    pipe.unet = torch.compile(pipe.unet, fullgraph=True, dynamic=False)
    with torch._dynamo.config.patch(recompile_limit=1, fail_on_recompile_limit_hit=True):
        frames = _run(pipe, name, num_inference_steps=steps)
    return frames, {k: dict(v) for k, v in counters.items()}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["TextToVideoSDPipeline", "StableVideoDiffusionPipeline", "I2VGenXLPipeline", "AnimateDiffPipeline",
                                  "StableDiffusionPipeline"])  # every UNet class: 3-D, spatio-temporal, I2VGen-XL, motion, 2-D
def test_compiled_unet_has_no_graph_break_and_no_recompile(folders, name):
    pipe = _load(folders, name)
    base = _run(pipe, name, num_inference_steps=3)
    frames, stats = _compiled_steps(pipe, name, 3)
    assert stats["stats"].get("unique_graphs", 0) == 1, stats  # one graph for every step: no recompilation
    assert not stats.get("graph_break"), stats["graph_break"]
    assert np.abs(frames - base).max() < 1e-4


# ---------------------------------------------------------------------------------------------- precision
def _load_as(folders, name: str, dtype: torch.dtype):
    folder = folders[CASES[name][0]]
    if isinstance(folder, tuple):
        adapter = vidiff.MotionAdapter.from_pretrained(folder[1], torch_dtype=dtype)
        pipe = getattr(vidiff, name).from_pretrained(folder[0], motion_adapter=adapter, torch_dtype=dtype)
    else:
        pipe = getattr(vidiff, name).from_pretrained(folder, torch_dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", ["TextToVideoSDPipeline", "StableVideoDiffusionPipeline", "I2VGenXLPipeline", "AnimateDiffPipeline"])
def test_half_precision_runs_stay_close_to_float32(folders, name, dtype):
    """Every video pipeline runs in bfloat16 and float16 on the CPU: weights in that dtype, finite frames, close to
    the float32 frames (half precision keeps 3-4 significant digits; the tiny random models amplify it a little)."""
    want = _run(_load(folders, name), name)
    pipe = _load_as(folders, name, dtype)
    assert pipe.unet.conv_in.weight.dtype == dtype
    got = _run(pipe, name)
    assert np.isfinite(got).all() and got.shape == want.shape
    assert np.abs(got - want).max() < 0.05, np.abs(got - want).max()


def test_float16_vae_with_force_upcast_encodes_in_float32(folders):
    """SVD: a float16 VAE whose config sets force_upcast encodes the conditioning image in float32 and decodes the
    frames in float16, as the reference does (it casts the VAE back before decoding), then stays float16."""
    pipe = _load_as(folders, "StableVideoDiffusionPipeline", torch.float16)
    pipe.vae.register_config(pipe.vae.config.replace(force_upcast=True), {})
    seen: dict[str, list[torch.dtype]] = {"encoder": [], "decoder": []}
    hooks = [getattr(pipe.vae, name).register_forward_pre_hook(lambda mod, args, name=name: seen[name].append(args[0].dtype))
             for name in seen]
    frames = _run(pipe, "StableVideoDiffusionPipeline")
    for h in hooks:
        h.remove()
    assert set(seen["encoder"]) == {torch.float32} and set(seen["decoder"]) == {torch.float16}, seen
    assert pipe.vae.dtype == torch.float16 and np.isfinite(frames).all()
    pipe.vae.register_config(pipe.vae.config.replace(force_upcast=False), {})
    seen["encoder"].clear()
    hooks = [pipe.vae.encoder.register_forward_pre_hook(lambda mod, args: seen["encoder"].append(args[0].dtype))]
    _run(pipe, "StableVideoDiffusionPipeline")
    hooks[0].remove()
    assert set(seen["encoder"]) == {torch.float16}, seen


# ---------------------------------------------------------------------------------------------- memory layout
@pytest.mark.parametrize("name", ["TextToVideoSDPipeline", "StableVideoDiffusionPipeline", "I2VGenXLPipeline", "AnimateDiffPipeline"])
def test_channels_last_keeps_its_layout_and_the_frames(folders, name, monkeypatch):
    """runtime.layout.channels_last on the UNet and the VAE: the same frames, and the UNet's last convolution still sees
    channels-last activations (every reshape on the way kept the layout; GroupNorm left to PyTorch's channels-last
    kernel, which by default runs such maps plain)."""
    from vidiff.runtime import layout
    from vidiff.runtime.layout import channels_last, is_channels_last

    pipe = _load(folders, name)
    base = _run(pipe, name)
    monkeypatch.setattr(layout, "PLAIN_GROUP_NORM", False)
    channels_last(pipe.unet)
    channels_last(pipe.vae)
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    seen: list[bool] = []
    hook = pipe.unet.conv_out.register_forward_pre_hook(lambda mod, args: seen.append(is_channels_last(args[0])))
    frames = _run(pipe, name)
    hook.remove()
    assert seen and all(seen), seen
    _close(frames, base)


# ---------------------------------------------------------------------------------------------- kernel-test helpers
class _OpSpy(TorchDispatchMode):
    """Names of the aten / mkldnn ops run inside the block."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN")


# ---------------------------------------------------------------------------------------------- convolution kernels
@pytest.mark.parametrize("shape, kernel, stride, padding, bias", [
    ((2, 8, 5, 7), (3, 3), 1, 1, True),  # non-square map
    ((3, 8, 6, 6), (3, 3), 2, 1, True),  # a downsampler
    ((2, 8, 4, 10), (3, 1), 1, (1, 0), True),  # a frame convolution on b c f (h w)
    ((2, 8, 4, 4), (1, 1), 1, 0, False),  # a shortcut without bias
    ((1, 8, 7, 5), (3, 3), 2, 0, False),
], ids=["3x3", "stride2", "frames", "1x1", "nopad"])
def test_gemm_convolution_is_conv2d(shape, kernel, stride, padding, bias):
    """runtime.conv.conv2d_gemm (im2col + one matrix product) gives F.conv2d's output and gradients."""
    from vidiff.runtime.conv import conv2d_gemm

    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn((6, shape[1]) + kernel, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True) if bias else None
    want = torch.nn.functional.conv2d(x, w, b, stride, padding)
    got = conv2d_gemm(x, w, b, stride, padding)
    assert got.shape == want.shape and got.is_contiguous()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(want.square().sum(), [x, w] + ([b] if bias else []))
    for a, e in zip(torch.autograd.grad(got.square().sum(), [x, w] + ([b] if bias else [])), grads):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)
    cl = conv2d_gemm(x.detach().contiguous(memory_format=torch.channels_last), w.detach(), b, stride, padding)
    assert cl.is_contiguous(memory_format=torch.channels_last)  # a channels-last input keeps its layout
    torch.testing.assert_close(cl, want.detach(), rtol=1e-12, atol=1e-12)


def _onednn_everywhere(monkeypatch):
    """runtime.linear's oneDNN product forced on for every product, whatever its size and the measured choice."""
    from vidiff.runtime import linear

    monkeypatch.setattr(linear, "ONEDNN_LINEAR", True)
    monkeypatch.setattr(linear, "ONEDNN_MIN_MACS", 0)
    monkeypatch.setattr(linear, "ONEDNN_MIN_WIDTH", 0)
    monkeypatch.setattr(linear, "ONEDNN_WIDE", True)


@needs_onednn
@pytest.mark.parametrize("channels_last", [False, True])
def test_gemm_convolution_through_onednn_is_conv2d(channels_last, monkeypatch):
    """With oneDNN's matrix product (runtime.linear, forced on) the im2col product gives F.conv2d's values, in the
    input's layout."""
    from vidiff.runtime import conv

    _onednn_everywhere(monkeypatch)
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(3, 8, 5, 4, generator=g), torch.randn(6, 8, 3, 3, generator=g), torch.randn(6, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), _OpSpy() as spy:
        got = conv.conv2d_gemm(x, w, b, 1, 1)
    assert "_linear_pointwise" in spy.ops and "addmm" not in spy.ops
    assert got.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    torch.testing.assert_close(got, torch.nn.functional.conv2d(x, w, b, 1, 1), rtol=1e-5, atol=1e-5)


def test_gemm_convolution_is_chosen_for_wide_weights_on_small_maps():
    from vidiff.runtime.conv import DTYPES, Conv2d, use_gemm

    def case(n, c, o, hw, k=(3, 3), stride=1, pad=1, dtype=torch.float32, device="cpu"):
        x = torch.empty((n, c) + hw, dtype=dtype, device=device)
        return use_gemm(x, torch.empty((o, c) + k, dtype=dtype, device=device), stride, pad)

    assert case(8, 1280, 1280, (4, 4)) and case(8, 1280, 1280, (2, 2)) and case(8, 1280, 1280, (8, 8), stride=2)
    assert case(2, 1280, 1280, (4, 16), k=(3, 1), pad=(1, 0))  # SVD's frame convolution at the inner blocks
    assert not case(8, 320, 320, (16, 16))  # narrow weight: oneDNN's direct kernel
    assert not case(8, 1280, 1280, (16, 16))  # big map
    assert not case(8, 1280, 1280, (4, 4), dtype=torch.float64) and not case(8, 1280, 1280, (4, 4), device="meta")
    for half in (torch.bfloat16, torch.float16):  # where oneDNN runs them natively (runtime.conv.DTYPES)
        assert case(8, 1280, 1280, (4, 4), dtype=half) == (half in DTYPES)
    w = torch.empty(1280, 1280, 3, 3).contiguous(memory_format=torch.channels_last)  # runtime.layout.channels_last
    assert not use_gemm(torch.empty(8, 1280, 4, 4), w, 1, 1)  # reshaping it would copy the weight on every call
    layer = Conv2d(4, 4, 3, padding=1, groups=2)  # grouped: nn.Conv2d's own forward
    x = torch.randn(1, 4, 5, 5)
    torch.testing.assert_close(layer(x), torch.nn.Conv2d.forward(layer, x), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["TextToVideoSDPipeline", "StableVideoDiffusionPipeline", "I2VGenXLPipeline", "AnimateDiffPipeline"])
def test_gemm_convolutions_everywhere_give_the_same_frames(folders, name, monkeypatch):
    """With the thresholds lowered so that every convolution of the UNet and the VAE runs as a matrix product, the
    frames stay those of the direct kernel (the tiny models never reach the real thresholds)."""
    from vidiff.runtime import conv

    pipe = _load(folders, name)
    base = _run(pipe, name)
    calls = []
    monkeypatch.setattr(conv, "GEMM_MIN_WEIGHT", 0)
    monkeypatch.setattr(conv, "GEMM_MAX_POSITIONS", 1 << 30)
    monkeypatch.setattr(conv, "conv2d_gemm", lambda *a, f=conv.conv2d_gemm: calls.append(1) or f(*a))
    frames = _run(pipe, name)
    assert len(calls) > 20, len(calls)
    _close(frames, base)


@pytest.mark.parametrize("shape, o, kernel, stride, padding", [
    ((2, 16, 9, 7), 24, (3, 3), 1, 1),  # odd sizes
    ((3, 8, 8, 8), 8, (3, 3), 2, 1),  # a downsampler
    ((2, 12, 5, 6), 12, (3, 1), 1, (1, 0)),  # a frame convolution over b c f (h w)
    ((1, 8, 6, 6), 16, (1, 1), 1, 0),  # a shortcut
])
def test_packed_convolution_is_as_close_to_float64_as_the_reference(shape, o, kernel, stride, padding):
    """runtime.conv's kept, reordered oneDNN weight: the convolution's values within float32 rounding of float64, no
    further from it than F.conv2d's, and its output channels-last."""
    from vidiff.runtime.conv import Conv2d, _PACKED, use_packed

    torch.manual_seed(0)
    layer = Conv2d(shape[1], o, kernel, stride=stride, padding=padding).eval()
    x = torch.randn(shape)
    with torch.no_grad():
        assert use_packed(x, layer.weight)
        got, plain = layer(x), torch.nn.functional.conv2d(x, layer.weight, layer.bias, stride, padding)
        exact = torch.nn.functional.conv2d(x.double(), layer.weight.double(), layer.bias.double(), stride, padding)
    assert id(layer.weight) in _PACKED and got.is_contiguous(memory_format=torch.channels_last)
    err, ref_err = (float((t.double() - exact).abs().max()) for t in (got, plain))
    assert err <= max(2 * ref_err, 1e-6), (err, ref_err)
    torch.testing.assert_close(got, plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("path", ["packed", "gemm"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision_convolutions_are_as_close_to_float64_as_the_reference(dtype, path, monkeypatch):
    """In bfloat16 / float16 (where oneDNN runs them natively) the kept-weight and the product paths give F.conv2d's
    values in that dtype: no further from float64 than F.conv2d's own (the product rounds once per output, as the
    direct kernel), on odd-sized maps, a downsampler and a frame convolution."""
    from vidiff.runtime import conv

    if dtype not in conv.DTYPES:
        pytest.skip(f"oneDNN does not run {dtype} natively on this CPU")
    if path == "gemm":  # every convolution as a product, whatever its size
        monkeypatch.setattr(conv, "GEMM_MIN_WEIGHT", 0)
        monkeypatch.setattr(conv, "GEMM_MAX_POSITIONS", 1 << 30)
    torch.manual_seed(0)
    for shape, o, kernel, stride, padding in (((2, 32, 9, 7), 48, (3, 3), 1, 1), ((3, 16, 8, 8), 16, (3, 3), 2, 1),
                                              ((2, 24, 5, 6), 24, (3, 1), 1, (1, 0))):
        layer = conv.Conv2d(shape[1], o, kernel, stride=stride, padding=padding).eval().to(dtype)
        x = torch.randn(shape, dtype=dtype)
        with torch.no_grad(), _OpSpy() as spy:
            got = layer(x)
        assert ("_convolution_pointwise" if path == "packed" else "im2col") in spy.ops, spy.ops
        assert got.dtype == dtype
        with torch.no_grad():
            plain = torch.nn.functional.conv2d(x, layer.weight, layer.bias, stride, padding)
            exact = torch.nn.functional.conv2d(x.double(), layer.weight.double(), layer.bias.double(), stride, padding)
        err, ref_err = (float((t.double() - exact).abs().max()) for t in (got, plain))
        assert err <= 1.5 * ref_err, (shape, err, ref_err)


@pytest.mark.parametrize("shape, groups", [((2, 64, 9, 7), 32), ((3, 40, 4, 4), 4), ((1, 8, 5, 6), 8)])
def test_group_norm_runs_channels_last_maps_plain(shape, groups, monkeypatch):
    """runtime.layout.GroupNorm: a channels-last CPU map is normalised in the plain layout (output plain) and its
    values are nn.GroupNorm's to float32 rounding, no further from float64 than PyTorch's channels-last kernel."""
    from vidiff.runtime import layout

    torch.manual_seed(0)
    norm = layout.GroupNorm(groups, shape[1], eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_(), norm.bias.normal_()
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        got = norm(x)
        theirs = torch.nn.GroupNorm.forward(norm, x)
        exact = torch.nn.functional.group_norm(x.double(), groups, norm.weight.double(), norm.bias.double(), 1e-6)
        monkeypatch.setattr(layout, "PLAIN_GROUP_NORM", False)
        kept = norm(x)
    assert got.is_contiguous() and layout.is_channels_last(kept) and torch.equal(kept, theirs)
    err, ref_err = (float((t.double() - exact).abs().max()) for t in (got, theirs))
    assert err <= max(2 * ref_err, 1e-6), (err, ref_err)
    torch.testing.assert_close(got, theirs, rtol=1e-5, atol=1e-5)


def test_group_norm_keeps_large_or_wide_group_maps_channels_last():
    """Where PyTorch's channels-last kernel is the faster one (a large map, many channels per group), it runs."""
    from vidiff.runtime import layout

    for shape, groups in [((1, 64, 32, 32), 32), ((2, 320, 4, 4), 8)]:  # 1024 positions; 40 channels per group
        norm = layout.GroupNorm(groups, shape[1])
        x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            out = norm(x)
        assert layout.is_channels_last(out) and torch.equal(out, torch.nn.GroupNorm.forward(norm, x))


def test_packed_weight_is_kept_and_rebuilt_when_the_weight_changes():
    """One reorder per weight; rebuilt after an in-place update, an edit through ``.data`` (which bumps no version),
    a LoRA fuse, a new tensor, a new input shape; dropped with its layer; not used with autograd, under
    PACK_WEIGHTS=False, or for float64."""
    import gc

    from vidiff.layers.lora import LoraHook
    from vidiff.runtime import conv

    torch.manual_seed(0)
    layer = conv.Conv2d(8, 8, 3, padding=1).eval()
    x = torch.randn(2, 8, 6, 6)
    reorders = []
    real = torch.ops.mkldnn._reorder_convolution_weight

    def expect(n):
        with torch.no_grad():
            out = layer(x)
            torch.testing.assert_close(out, torch.nn.functional.conv2d(x, layer.weight, layer.bias, 1, 1), rtol=1e-5, atol=1e-5)
        assert len(reorders) == n, reorders

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.ops.mkldnn, "_reorder_convolution_weight", lambda *a: reorders.append(1) or real(*a), raising=False)
        expect(1)
        expect(1)  # kept
        with torch.no_grad():
            layer.weight.mul_(0.5)  # in place: the version changes
        expect(2)
        layer.weight.data[0, 0, 0, 0] = 3.0  # through .data: no version change, the sample catches the first value
        expect(3)
        layer.weight.data.copy_(torch.randn_like(layer.weight))  # a whole new set of values through .data
        expect(4)
        layer.weight = torch.nn.Parameter(torch.randn_like(layer.weight))  # a new parameter
        expect(5)
        hook = LoraHook(layer)
        hook.add("a", torch.randn(2, 8, 3, 3), torch.randn(8, 2, 1, 1), 1.0)
        hook.active = ["a"]
        hook.merge()  # fusing adds B @ A into the weight in place
        hook.enabled = False
        expect(6)
        with torch.enable_grad():
            layer(x.requires_grad_()).sum().backward()  # autograd: F.conv2d
        x = x.detach()
        mp.setattr(conv, "PACK_WEIGHTS", False)
        expect(6)
        mp.setattr(conv, "PACK_WEIGHTS", True)
        with torch.no_grad():
            layer.double()(x.double())
        assert len(reorders) == 6
        layer.float()
        conv.forget_packed()
        expect(7)
        # another input shape: oneDNN blocks the weight for the input it sees (a batch of one gets another layout,
        # and a kept copy in the other one was reordered back on every call, 20-30x slower): rebuilt once per change
        x = torch.randn(1, 8, 6, 6)
        expect(8)
        expect(8)
        x = torch.randn(2, 8, 6, 6)
        expect(9)
    w = layer.weight
    with torch.no_grad():
        assert conv.use_packed(torch.empty(1, 8, 64, 64), w) and not conv.use_packed(torch.empty(1, 8, 64, 65), w)
        assert not conv.use_packed(torch.empty(2, 8, 64, 64), w)  # PACK_MAX_POSITIONS counts batch x height x width
    key = id(layer.weight)
    assert key in conv._PACKED
    del layer, hook, w
    gc.collect()
    assert key not in conv._PACKED  # the kept copy leaves with its parameter


@pytest.mark.parametrize("name", ["TextToVideoSDPipeline", "StableVideoDiffusionPipeline", "I2VGenXLPipeline", "AnimateDiffPipeline"])
def test_packed_convolutions_give_the_same_frames(folders, name, monkeypatch):
    """The pipelines with and without the kept, reordered convolution weights: the same frames (float32 rounding)."""
    from vidiff.runtime import conv

    pipe = _load(folders, name)
    monkeypatch.setattr(conv, "PACK_WEIGHTS", False)
    base = _run(pipe, name)
    monkeypatch.setattr(conv, "PACK_WEIGHTS", True)
    calls = []
    monkeypatch.setattr(conv, "conv2d_packed", lambda *a, f=conv.conv2d_packed: calls.append(1) or f(*a))
    frames = _run(pipe, name)
    assert len(calls) > 20, len(calls)
    _close(frames, base)


# ---------------------------------------------------------------------------------------------- matrix-product kernels
@needs_onednn
@pytest.mark.parametrize("shape, bias", [((3, 5, 24), True), ((7, 24), False), ((2, 4, 3, 24), True)], ids=["3d", "2d-nobias", "4d"])
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_onednn_linear_is_f_linear(shape, bias, layout, monkeypatch):
    """runtime.linear.linear through oneDNN (forced on, any size) gives F.linear's values; off, it is F.linear."""
    from vidiff.runtime import linear

    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape[:-1] + (2 * shape[-1],), generator=g)[..., ::2] if layout == "strided" else torch.randn(shape, generator=g)
    w, b = torch.randn(40, shape[-1], generator=g), (torch.randn(40, generator=g) if bias else None)
    want = torch.nn.functional.linear(x, w, b)
    _onednn_everywhere(monkeypatch)
    with torch.no_grad(), _OpSpy() as spy:
        got = linear.linear(x, w, b)
    copied = layout == "strided" and x.dim() > 2  # no unit stride in its matrices: copied first (see below)
    assert spy.ops == ["clone"] * copied + ["_linear_pointwise"]
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(linear, "ONEDNN_LINEAR", False)
    with torch.no_grad(), _OpSpy() as spy:
        assert torch.equal(linear.linear(x, w, b), want)
    assert "_linear_pointwise" not in spy.ops


@pytest.mark.parametrize("onednn", [False, True], ids=["blas", "onednn"])
def test_inputs_without_unit_stride_are_copied_first(onednn, monkeypatch):
    """A channel-first map permuted to (b h w) f c (a temporal transformer's proj_in input: no unit stride in its
    matrices) is copied, then one 2-D product, not F.linear's batched path; a transposed view (unit stride across
    rows) is passed as it is; the values are F.linear's, gradients too."""
    from vidiff.runtime import linear

    if onednn:
        if not torch.backends.mkldnn.is_available():
            pytest.skip("oneDNN not built in")
        _onednn_everywhere(monkeypatch)
    else:
        monkeypatch.setattr(linear, "ONEDNN_LINEAR", False)
    product = "_linear_pointwise" if onednn else "addmm"
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(24, 16, generator=g), torch.randn(24, generator=g)
    x = torch.randn(1, 16, 3, 4, 5, generator=g).permute(0, 3, 4, 2, 1).reshape(20, 3, 16)  # (b h w) f c, c outermost
    assert x.stride(-1) != 1 and x.stride(-2) != 1
    with torch.no_grad(), _OpSpy() as spy:
        got = linear.linear(x, w, b)
    assert [op for op in spy.ops if op not in ("view", "t")] == ["clone", product], spy.ops  # copy, one 2-D product
    torch.testing.assert_close(got, torch.nn.functional.linear(x, w, b), rtol=1e-6, atol=1e-6)
    assert got.shape == (20, 3, 24)
    y = torch.randn(2, 16, 3, 5, generator=g).permute(0, 2, 3, 1).reshape(2, 15, 16)  # b (h w) c of a b c h w map
    with torch.no_grad(), _OpSpy() as spy:
        got = linear.linear(y, w, b)
    assert "clone" not in spy.ops and "copy_" not in spy.ops, spy.ops
    torch.testing.assert_close(got, torch.nn.functional.linear(y, w, b), rtol=1e-6, atol=1e-6)
    xg, xw = (x.detach().requires_grad_() for _ in range(2))
    linear.linear(xg, w, b).square().sum().backward()
    torch.nn.functional.linear(xw, w, b).square().sum().backward()
    torch.testing.assert_close(xg.grad, xw.grad)


def test_onednn_linear_choice(monkeypatch):
    """oneDNN only for large float32 CPU products without autograd, wide and narrow ones as measured; Linear keeps
    nn.Linear's keys and is what the attention and feed-forward layers are built with."""
    from vidiff.layers.attention import Attention
    from vidiff.layers.transformers import FeedForward
    from vidiff.runtime import linear

    monkeypatch.setattr(linear, "ONEDNN_LINEAR", True)
    monkeypatch.setattr(linear, "ONEDNN_WIDE", True)
    x, w = torch.empty(128, 1280), torch.empty(1280, 1280)
    with torch.no_grad():
        assert linear.use_onednn(x, w) == torch.backends.mkldnn.is_available()
        assert not linear.use_onednn(torch.empty(2, 320), torch.empty(320, 320))  # small: F.linear's lower fixed cost
        assert linear.use_onednn(torch.empty(16, 320), torch.empty(320, 320)) == torch.backends.mkldnn.is_available()
        monkeypatch.setattr(linear, "ONEDNN_NARROW", False)
        assert not linear.use_onednn(torch.empty(4096, 128), torch.empty(512, 128))  # narrow weight, measured slower
        assert linear.use_onednn(x, w) == torch.backends.mkldnn.is_available()  # wide ones still
        monkeypatch.setattr(linear, "ONEDNN_NARROW", True)
        assert linear.use_onednn(torch.empty(4096, 128), torch.empty(512, 128)) == torch.backends.mkldnn.is_available()
        assert not linear.use_onednn(torch.empty(8, 128), torch.empty(512, 128))  # narrow and small
        monkeypatch.setattr(linear, "ONEDNN_WIDE", False)
        assert not linear.use_onednn(x, w)  # wide weight, measured slower
        assert linear.use_onednn(torch.empty(4096, 128), torch.empty(512, 128)) == torch.backends.mkldnn.is_available()
        monkeypatch.setattr(linear, "ONEDNN_WIDE", True)
        assert not linear.use_onednn(x.to("meta"), w.to("meta")) and not linear.use_onednn(x.double(), w.double())
        monkeypatch.setattr(linear, "BF16", True)
        monkeypatch.setattr(linear, "ONEDNN_BF16", False)
        assert not linear.use_onednn(x.bfloat16(), w.bfloat16())  # bfloat16: its own measured choice
        monkeypatch.setattr(linear, "ONEDNN_BF16", True)
        assert linear.use_onednn(x.bfloat16(), w.bfloat16()) == torch.backends.mkldnn.is_available()
        assert not linear.use_onednn(x.bfloat16(), w) and not linear.use_onednn(x.half(), w.half())
        monkeypatch.setattr(linear, "BF16", False)  # oneDNN without native bfloat16 on this CPU
        assert not linear.use_onednn(x.bfloat16(), w.bfloat16())
    assert not linear.use_onednn(x, w)  # autograd on: F.linear
    monkeypatch.setattr(linear, "ONEDNN_LINEAR", False)
    with torch.no_grad():
        assert not linear.use_onednn(x, w)
    layer = linear.Linear(8, 4)
    assert isinstance(layer, torch.nn.Linear) and list(layer.state_dict()) == list(torch.nn.Linear(8, 4).state_dict())
    attn, ff = Attention(query_dim=16, cross_attention_dim=12, heads=2, dim_head=8), FeedForward(16)
    assert all(type(m) is linear.Linear for m in (attn.to_q, attn.to_k, attn.to_v, attn.to_out[0], ff.net[0].proj, ff.net[2]))


@needs_onednn
@pytest.mark.parametrize("kind, shape, gain", [("NARROW", (128, 512), 0.8), ("WIDE", (1280, 1280), 0.95)])
@pytest.mark.parametrize("margin, want", [(-0.3, True), (0.0, True), (0.05, False)], ids=["faster", "at-gain", "slower"])
def test_onednn_choice_is_measured_once(kind, shape, gain, margin, want, monkeypatch):
    """Whether wide (narrow) products take oneDNN is measured on the first one that qualifies, on WIDE_SHAPES
    (NARROW_SHAPES): oneDNN's time over F.linear's at most WIDE_GAIN (NARROW_GAIN), then kept; the other class is
    not measured with it, and a pinned choice is not measured."""
    from vidiff.runtime import linear

    assert getattr(linear, f"{kind}_GAIN") == gain
    calls = []
    monkeypatch.setattr(linear, "ONEDNN_LINEAR", True)
    monkeypatch.setattr(linear, "ONEDNN_WIDE", None)
    monkeypatch.setattr(linear, "ONEDNN_NARROW", None)
    monkeypatch.setattr(linear, "measure", lambda shapes, repeats=7, rounds=3: calls.append(shapes) or gain + margin)
    x, w = torch.empty(4096, shape[1]), torch.empty(shape[0], shape[1])
    assert not linear.use_onednn(x, w) and not calls  # autograd on: not even measured
    with torch.no_grad():
        for _ in range(3):
            assert linear.use_onednn(x, w) == want
    assert calls == [getattr(linear, f"{kind}_SHAPES")] and getattr(linear, f"ONEDNN_{kind}") is want
    assert getattr(linear, "ONEDNN_WIDE" if kind == "NARROW" else "ONEDNN_NARROW") is None  # the other: not yet
    monkeypatch.setattr(linear, f"ONEDNN_{kind}", not want)
    with torch.no_grad():
        assert linear.use_onednn(x, w) == (not want)
    assert len(calls) == 1


def test_bf16_choice_is_measured_once_in_bf16(monkeypatch):
    """The bfloat16 choice is measured on the first bfloat16 product that qualifies, on both shape sets in
    bfloat16, against BF16_GAIN, then kept; float32 products do not measure it."""
    from vidiff.runtime import linear

    calls = []
    monkeypatch.setattr(linear, "ONEDNN_LINEAR", True)
    monkeypatch.setattr(linear, "BF16", True)
    monkeypatch.setattr(linear, "ONEDNN_BF16", None)
    monkeypatch.setattr(linear, "ONEDNN_WIDE", False)
    monkeypatch.setattr(linear, "measure", lambda shapes, repeats=7, rounds=3, dtype=torch.float32:
                        calls.append((shapes, dtype)) or linear.BF16_GAIN - 0.1)
    x, w = torch.empty(4096, 1280), torch.empty(1280, 1280)
    with torch.no_grad():
        assert not linear.use_onednn(x, w) and not calls
        for _ in range(3):
            assert linear.use_onednn(x.bfloat16(), w.bfloat16()) == torch.backends.mkldnn.enabled
    assert calls == [(linear.WIDE_SHAPES + linear.NARROW_SHAPES, torch.bfloat16)] and linear.ONEDNN_BF16 is True


@needs_onednn
def test_bf16_onednn_linear_is_as_close_to_float64_as_f_linear(monkeypatch):
    """bfloat16 through oneDNN's product: F.linear's values in bfloat16 (no further from float64 than F.linear's)."""
    from vidiff.runtime import linear

    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("oneDNN does not run bfloat16 natively on this CPU")
    _onednn_everywhere(monkeypatch)
    monkeypatch.setattr(linear, "BF16", True)
    monkeypatch.setattr(linear, "ONEDNN_BF16", True)
    g = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(s, generator=g) for s in ((3, 37, 48), (40, 48), (40,)))
    xb, wb, bb = x.bfloat16(), w.bfloat16(), b.bfloat16()
    with torch.no_grad(), _OpSpy() as spy:
        got = linear.linear(xb, wb, bb)
    assert "_linear_pointwise" in spy.ops and got.dtype == torch.bfloat16 and got.shape == (3, 37, 40)
    exact = torch.nn.functional.linear(xb.double(), wb.double(), bb.double())
    plain = torch.nn.functional.linear(xb, wb, bb)
    err, ref_err = (float((t.double() - exact).abs().max()) for t in (got, plain))
    assert err <= 1.5 * ref_err, (err, ref_err)


@needs_onednn
@pytest.mark.parametrize("kind", ["WIDE", "NARROW"])
def test_measure_times_both_kernels(kind):
    """The measurement runs both kernels on every shape and returns a positive time ratio."""
    from vidiff.runtime import linear

    shapes = getattr(linear, f"{kind}_SHAPES")
    with _OpSpy() as spy:
        ratio = linear.measure(shapes, repeats=1, rounds=3)
    assert 0 < ratio < float("inf")
    # a warm-up pass, then one timed pass per round (F.linear: addmm)
    assert spy.ops.count("_linear_pointwise") == spy.ops.count("addmm") == 4 * len(shapes)


def test_measure_takes_the_median_round(monkeypatch):
    """One disturbed round (a stolen time slice makes F.linear look 4x slower in it) does not set the ratio."""
    import time

    from vidiff.runtime import linear

    clock, calls = [0.0], []

    def kernel(name, durations):
        def run(*args):
            calls.append(name)
            clock[0] += durations[sum(c == name for c in calls) - 1]
        return run

    # one shape, repeats=1, rounds=3: a warm-up pass of both kernels, then one timed pass per round
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", kernel("onednn", [1, 1, 1, 1]), raising=False)
    monkeypatch.setattr(linear.F, "linear", kernel("blas", [1, 1, 4, 1]))
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    assert linear.measure(((8, 4, 4),), repeats=1, rounds=3) == 1.0  # the rounds read 1, 0.25, 1
    assert calls == ["onednn", "blas"] * 4


@needs_onednn
@pytest.mark.parametrize("name", ["TextToVideoSDPipeline", "StableVideoDiffusionPipeline", "AnimateDiffPipeline"])
def test_onednn_linear_everywhere_gives_the_same_frames(folders, name, monkeypatch):
    """With oneDNN forced for every linear layer of every model (the tiny models' products are below the real size
    thresholds), the frames stay those of F.linear."""
    from vidiff.runtime import linear

    pipe = _load(folders, name)
    monkeypatch.setattr(linear, "ONEDNN_LINEAR", False)
    base = _run(pipe, name)
    _onednn_everywhere(monkeypatch)
    with _OpSpy() as spy:
        frames = _run(pipe, name)
    assert spy.ops.count("_linear_pointwise") > 20, spy.ops.count("_linear_pointwise")
    _close(frames, base)


# ---------------------------------------------------------------------------------------------- attention kernels
@pytest.mark.parametrize("b, heads, n_q, n_k, d", [
    (6, 2, 4, 4, 8),  # temporal attention, 4 frames: broadcast products
    (5, 3, 3, 2, 4),  # 2 keys, odd sizes
    (4, 2, 5, 5, 8),  # 5 frames: batched matrix products
    (3, 2, 7, 32, 8),  # the longest key sequence computed explicitly
    (2, 1, 9, 14, 16),  # cross-attention shape (n_q != n_k)
], ids=["4keys", "2keys", "5keys", "32keys", "cross"])
@pytest.mark.parametrize("chunked", [False, True], ids=["whole", "chunks"])
def test_explicit_attention_is_sdpa(b, heads, n_q, n_k, d, chunked, monkeypatch):
    """runtime.attention's explicit products give F.scaled_dot_product_attention's output and gradients on the
    projections' transposed views, whole or in batch chunks (one row per chunk)."""
    from vidiff.runtime import attention

    if chunked:
        monkeypatch.setattr(attention, "_CHUNK_ELEMENTS", 1)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(b, n_q, heads * d, generator=g, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(b, n_k, heads * d, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    views = [t.view(b, -1, heads, d).transpose(1, 2) for t in (q, k, v)]  # b heads n d, as the processors pass them
    assert attention.use_explicit(views[0], views[1])
    got = attention.scaled_dot_product_attention(*views)
    want = torch.nn.functional.scaled_dot_product_attention(*views)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    if chunked or n_k <= attention.BROADCAST_MAX_KEYS:  # written in token order: back to (b, n, heads * d) for free
        assert got.transpose(1, 2).is_contiguous()
    for a, e in zip(torch.autograd.grad(got.square().sum(), [q, k, v]), torch.autograd.grad(want.square().sum(), [q, k, v])):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


def test_explicit_attention_is_chosen_for_short_key_sequences_only():
    from vidiff.runtime.attention import MATH_MAX_KEYS, use_explicit

    def case(n_k, dtype=torch.float32, device="cpu", mask=None):
        return use_explicit(torch.empty(2, 2, 8, 4, dtype=dtype, device=device), torch.empty(2, 2, n_k, 4, dtype=dtype, device=device), mask)

    assert case(2) and case(4) and case(MATH_MAX_KEYS) and case(8, dtype=torch.float64)
    assert not case(1) and not case(MATH_MAX_KEYS + 1) and not case(77)  # one key / long sequences: SDPA
    assert not case(4, dtype=torch.bfloat16) and not case(4, dtype=torch.float16) and not case(4, device="meta")
    assert not case(4, mask=torch.zeros(2, 2, 8, 4))  # masks go to SDPA


@pytest.mark.parametrize("name", ["TextToVideoSDPipeline", "StableVideoDiffusionPipeline", "AnimateDiffPipeline", "TextToVideoZeroPipeline"])
def test_attention_kernels_everywhere_give_the_same_frames(folders, name, monkeypatch):
    """Every attention call explicit (even 77-key cross-attention), in small chunks, or every call through SDPA:
    the same frames."""
    from vidiff.runtime import attention

    pipe = _load(folders, name)
    monkeypatch.setattr(attention, "MATH_MAX_KEYS", 0)
    base = _run(pipe, name)
    calls = []
    monkeypatch.setattr(attention, "MATH_MAX_KEYS", 1 << 30)
    monkeypatch.setattr(attention, "_CHUNK_ELEMENTS", 256)
    monkeypatch.setattr(attention, "_in_chunks", lambda *a, f=attention._in_chunks, **k: calls.append(1) or f(*a, **k))
    _close(_run(pipe, name), base)
    assert len(calls) > 10, len(calls)


# ---------------------------------------------------------------------------------------------- row chunking
def test_map_rows_is_the_whole_call(monkeypatch):
    from vidiff.runtime import chunking
    from vidiff.layers.transformers import FeedForward

    torch.manual_seed(0)
    ff = FeedForward(8, mult=4, activation_fn="geglu").double().eval()
    x = torch.randn(3, 10, 8, dtype=torch.float64)
    want = ff._forward(x)
    assert chunking.rows_per_chunk(30, ff._width) == 30  # small inputs run whole
    monkeypatch.setattr(chunking, "MIN_ROWS", 1)
    monkeypatch.setattr(chunking, "CHUNK_ELEMENTS", 7 * ff._width)  # 7 rows per block: 30 rows = 4 blocks + 2
    assert chunking.rows_per_chunk(30, ff._width) == 7
    calls = []
    with torch.no_grad():
        got = chunking.map_rows(lambda t: calls.append(t.shape[0]) or ff._forward(t), x, ff._width)
    assert calls == [7, 7, 7, 7, 2] and got.shape == want.shape
    torch.testing.assert_close(got, want.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ff(x), want, rtol=1e-12, atol=1e-12)  # FeedForward.forward goes through map_rows


@pytest.mark.parametrize("bias", [True, False])
def test_gated_gelu_in_column_blocks_is_the_reference_geglu(monkeypatch, bias):
    """GEGLU without autograd on the CPU: the value and gate halves as separate products, in column blocks when
    the weight is large (here forced: blocks of 64 columns, the last one short), written into one output."""
    import diffusers.models.activations as ref_act

    from vidiff.layers.transformers import GEGLU
    from vidiff.runtime import chunking

    torch.manual_seed(0)
    ref = ref_act.GEGLU(48, 200, bias=bias).eval()
    mine = GEGLU(48, 200, bias=bias).eval()
    mine.load_state_dict(ref.state_dict())
    x = torch.randn(2, 9, 48)
    with torch.no_grad():
        want = ref(x)
        monkeypatch.setattr(chunking, "COLUMN_BLOCK_BYTES", 64 * 48 * 4)  # 64 columns per block: 64, 64, 64, 8
        products = []
        monkeypatch.setattr(chunking, "linear", lambda x, w, b=None, f=chunking.linear: products.append(w.shape[0]) or f(x, w, b))
        got = mine(x)
    assert products == [64, 64, 64, 64, 64, 64, 8, 8]  # value and gate block of each column range
    assert got.shape == want.shape and got.is_contiguous()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_gated_gelu_calls_the_layer_when_watched_or_recording():
    """A hooked projection (LoRA, offload), autograd, or a subclass: GEGLU calls the projection as a module."""
    from vidiff.layers.transformers import GEGLU
    from vidiff.runtime import chunking

    torch.manual_seed(0)
    g = GEGLU(16, 32).eval()
    x = torch.randn(5, 16)
    with torch.no_grad():
        want = g(x)
    assert chunking.plain_linear(g.proj, x)
    seen = []
    handle = g.proj.register_forward_hook(lambda m, a, out: seen.append(out.shape) or out * 2)  # a hook that changes the output
    with torch.no_grad():
        doubled = g(x)
    handle.remove()
    assert seen == [(5, 64)] and not torch.allclose(doubled, want)
    value, gate = (2 * g.proj(x)).chunk(2, -1)
    torch.testing.assert_close(doubled, value * torch.nn.functional.gelu(gate))
    out = g(x.requires_grad_())  # autograd: the module path, with a gradient for every weight
    out.sum().backward()
    assert g.proj.weight.grad is not None and x.grad is not None
    torch.testing.assert_close(out.detach(), want, rtol=1e-5, atol=1e-6)


def test_attention_over_one_key_is_its_value():
    """A one-token context (SVD's image embedding): every query's output is to_out(to_v(context)); the query
    projection is not run without autograd, and with autograd the full path runs (to_q gets its gradient, zero up to rounding)."""
    from diffusers.models.attention_processor import Attention as RefAttention

    from vidiff.layers.attention import Attention

    torch.manual_seed(0)
    ref = RefAttention(32, cross_attention_dim=24, heads=4, dim_head=8, bias=True).eval()
    mine = Attention(32, cross_attention_dim=24, heads=4, dim_head=8, bias=True).eval()
    mine.load_state_dict(ref.state_dict())
    x, ctx = torch.randn(6, 5, 32), torch.randn(2, 1, 24)  # one context per 3 rows (frames folded into the batch)
    with torch.no_grad():
        want = ref(x, encoder_hidden_states=ctx.repeat_interleave(3, 0))
        calls = []
        handle = mine.to_q.register_forward_pre_hook(lambda *a: calls.append(1))
        got = mine(x, encoder_hidden_states=ctx)
        assert not calls and got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(mine(x, encoder_hidden_states=ctx.repeat_interleave(3, 0)), want, rtol=1e-5, atol=1e-6)
        mine(x, encoder_hidden_states=torch.randn(2, 2, 24))  # two keys: the query projection runs
        assert calls == [1]
    handle.remove()
    mine(x, encoder_hidden_states=ctx).sum().backward()
    assert mine.to_q.weight.grad is not None and float(mine.to_q.weight.grad.abs().max()) < 1e-5  # zero up to rounding


def test_row_chunked_feed_forwards_give_the_same_frames(folders, monkeypatch):
    """Every feed-forward of SVD's spatial and temporal blocks in blocks of 3 rows: the same frames."""
    from vidiff.runtime import chunking

    name = "StableVideoDiffusionPipeline"
    pipe = _load(folders, name)
    base = _run(pipe, name)
    from vidiff.layers.transformers import FeedForward

    blocks = []
    monkeypatch.setattr(FeedForward, "_forward", lambda self, x, f=FeedForward._forward: blocks.append(x.shape[0]) or f(self, x))
    _run(pipe, name)
    whole = len(blocks)
    blocks.clear()
    monkeypatch.setattr(chunking, "MIN_ROWS", 1)
    monkeypatch.setattr(chunking, "CHUNK_ELEMENTS", 3 * 256)
    _close(_run(pipe, name), base)
    assert len(blocks) > 10 * whole and max(blocks) <= 3, (whole, len(blocks), max(blocks))


# ---------------------------------------------------------------------------------------------- guidance batches
@pytest.mark.parametrize("name", ["TextToVideoSDPipeline", "StableVideoDiffusionPipeline", "I2VGenXLPipeline", "AnimateDiffPipeline"])
def test_split_guidance_batches_give_the_same_frames(folders, name, monkeypatch):
    """Every guided UNet call as two half-batch calls (uncond, then cond): the same frames, twice the calls."""
    from vidiff.runtime import guidance

    pipe = _load(folders, name)
    batches = []
    pipe.unet.register_forward_pre_hook(lambda m, a, k: batches.append((a[0] if a else k["sample"]).shape[0]), with_kwargs=True)
    monkeypatch.setattr(guidance, "SPLIT_MIN_POSITIONS", None)
    base = _run(pipe, name)
    whole = list(batches)
    batches.clear()
    monkeypatch.setattr(guidance, "SPLIT_MIN_POSITIONS", 0)
    _close(_run(pipe, name), base)
    assert whole and batches == [whole[0] // 2] * (2 * len(whole)), (whole, batches)


def test_guidance_batches_split_only_when_large(monkeypatch):
    from vidiff.runtime import guidance

    unet = type("U", (), {"config": type("C", (), {"in_channels": 8})()})()
    svd_256 = torch.empty(2, 8, 8, 64, 64)  # [uncond, cond] x 8 frames x 8 channels x 64 x 64 latents
    assert guidance.split_batch(unet, svd_256, guided=True)
    assert not guidance.split_batch(unet, svd_256, guided=False)  # no guidance: one batch
    assert not guidance.split_batch(unet, torch.empty(2, 4, 8, 16, 16), guided=True)  # mid-size bench calls: whole
    monkeypatch.setattr(guidance, "SPLIT_MIN_POSITIONS", None)
    assert not guidance.split_batch(unet, svd_256, guided=True)
    halves = [guidance._half({"a": (torch.arange(4), 7), "b": torch.zeros(3), "t": torch.tensor(5)}, 4, p) for p in (0, 1)]
    assert halves[1]["a"][0].tolist() == [2, 3] and halves[1]["a"][1] == 7 and halves[0]["b"].shape == (3,)
    assert halves[0]["t"].item() == 5
    assert guidance._half(torch.arange(12), 4, 1).tolist() == list(range(6, 12))  # per-frame rows: 4 videos x 3 frames


def test_split_guidance_batches_with_per_frame_text(folders, monkeypatch):
    """AnimateDiff with a callback that reads prompt_embeds passes per-frame text ((2 b f) rows) to its UNet: split
    in halves with the sample, the same frames."""
    from vidiff.runtime import guidance

    name = "AnimateDiffPipeline"
    pipe = _load(folders, name)
    seen = []
    pipe.unet.register_forward_pre_hook(lambda m, a, k: seen.append(k["encoder_hidden_states"].shape[0]), with_kwargs=True)
    callback = dict(callback_on_step_end=lambda p, i, t, kw: {}, callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"])
    monkeypatch.setattr(guidance, "SPLIT_MIN_POSITIONS", None)
    base = _run(pipe, name, **callback)
    assert seen[0] == 2 * CASES[name][1]["num_frames"], seen  # per-frame rows
    seen.clear()
    monkeypatch.setattr(guidance, "SPLIT_MIN_POSITIONS", 0)
    _close(_run(pipe, name, **callback), base)
    assert seen[0] == CASES[name][1]["num_frames"], seen


# ---------------------------------------------------------------------------------------------- shared prefix
@pytest.mark.parametrize("name", ["TextToVideoSDPipeline", "I2VGenXLPipeline"])
def test_guided_unet_runs_its_text_free_prefix_once(folders, name, monkeypatch):
    """With guidance the UNet's conv_in + transformer_in (before any text) see one half of the [uncond, cond] batch,
    whose halves are the same latents; the frames equal those of the whole-batch prefix."""
    from vidiff.runtime import guidance

    pipe = _load(folders, name)
    rows = []
    pipe.unet.transformer_in.register_forward_pre_hook(lambda m, a: rows.append(a[0].shape[0]))
    calls = []
    pipe.unet.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    frames = _run(pipe, name)
    frames_per_video = CASES[name][1]["num_frames"]
    assert calls and set(calls) == {2}, calls  # one video, guided: [uncond, cond] per UNet call
    assert rows == [frames_per_video] * len(calls), rows  # (b f) rows of one half
    rows.clear(), calls.clear()
    monkeypatch.setattr(guidance, "once_for_equal_halves", lambda fn, *t: fn(*t))
    import importlib

    module = importlib.import_module(type(pipe.unet).__module__)
    monkeypatch.setattr(module, "once_for_equal_halves", lambda fn, *t: fn(*t))
    whole = _run(pipe, name)
    assert rows == [2 * frames_per_video] * len(calls), rows  # the whole batch this time
    np.testing.assert_allclose(frames, whole, rtol=0, atol=1e-5)


def test_once_for_equal_halves_only_shares_equal_halves():
    from vidiff.runtime.guidance import once_for_equal_halves

    seen = []

    def fn(x, y):
        seen.append(x.shape[0])
        return torch.cat([x, y], dim=1) * 2

    a, b = torch.randn(1, 3), torch.randn(1, 2)
    out = once_for_equal_halves(fn, torch.cat([a, a]), torch.cat([b, b]))
    assert seen == [1] and torch.equal(out, fn(torch.cat([a, a]), torch.cat([b, b])))
    seen.clear()
    once_for_equal_halves(fn, torch.cat([a, a]), torch.cat([b, b + 1]))  # second input differs: whole batch
    once_for_equal_halves(fn, torch.randn(3, 3), torch.randn(3, 2))  # odd batch
    assert seen == [2, 3]


# ---------------------------------------------------------------------------------------------- up-block memory
@pytest.mark.parametrize("name", ["TextToVideoSDPipeline", "StableVideoDiffusionPipeline", "AnimateDiffPipeline", "I2VGenXLPipeline"])
def test_up_blocks_free_the_concatenated_input_before_attention(folders, name):
    """In every up block with attention, the resnet's input (running features + skip) is gone by the time the
    attention after it runs (layers/unet_passes.py: the up pass runs a layer as two stages)."""
    import weakref

    pipe = _load(folders, name)
    inputs, alive = {}, []
    for block in pipe.unet.up_blocks:
        if getattr(block, "attentions", None) is None:
            continue
        for i, (resnet, attn) in enumerate(zip(block.resnets, block.attentions)):
            resnet.register_forward_pre_hook(lambda m, a, k, key=(id(block), i): inputs.__setitem__(key, weakref.ref(a[0] if a else k["input_tensor"])), with_kwargs=True)
            attn.register_forward_pre_hook(lambda m, a, key=(id(block), i): alive.append(inputs[key]() is not None))
    _run(pipe, name)
    assert alive and not any(alive), alive


@pytest.mark.parametrize("name", ["TextToVideoSDPipeline", "StableVideoDiffusionPipeline"])
def test_decoder_up_blocks_free_their_input_after_the_first_resnet(folders, name):
    """The VAE decoders run their up blocks step by step (vae_blocks.block_steps): a block's input (the previous
    block's upsampled map) is gone when the block's second resnet starts, not held until the block returns."""
    import weakref

    pipe = _load(folders, name)
    inputs, alive = {}, []
    for block in pipe.vae.decoder.up_blocks:
        first, second = block.resnets[0], block.resnets[1]
        first.register_forward_pre_hook(lambda m, a, k, b=block: inputs.__setitem__(id(b), weakref.ref(a[0] if a else k["input_tensor"])),
                                        with_kwargs=True)
        second.register_forward_pre_hook(lambda m, a, b=block: alive.append(inputs[id(b)]() is not None))
    _run(pipe, name)
    assert alive and not any(alive), alive


def test_decoders_free_memory_before_large_up_blocks_only(monkeypatch):
    """release_free_memory runs before a decoder up block whose input reaches LARGE_BYTES, and not for small ones."""
    from vidiff.runtime import memory

    calls = []
    monkeypatch.setattr(memory, "release_free_memory", lambda: calls.append(1) or True)
    torch.manual_seed(0)
    vae = vidiff.AutoencoderKL(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                               up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=32, layers_per_block=1).eval()
    with torch.no_grad():
        vae.decode(torch.randn(1, 4, 8, 8))
        assert calls == []
        monkeypatch.setattr(memory, "LARGE_BYTES", 32 * 8 * 8 * 4)  # the first up block's input: 32 x 8 x 8 floats
        vae.decode(torch.randn(1, 4, 8, 8))
    assert calls == [1, 1]


def test_in_place_helpers_keep_values_and_autograd():
    """act_/add_ write into the caller's intermediate only where autograd does not record it; the values are those
    of the out-of-place expressions, and gradients through a resnet and an alpha blend are unchanged."""
    from vidiff.layers.spatio_temporal import AlphaBlender, SpatioTemporalResBlock
    from vidiff.runtime.memory import act_, add_

    torch.manual_seed(0)
    x, y = torch.randn(2, 3, 4), torch.randn(3, 1)
    with torch.no_grad():
        a = x.clone()
        assert act_(torch.nn.SiLU(), a) is a and torch.equal(a, torch.nn.functional.silu(x))
        b = x.clone()
        assert add_(b, y) is b and torch.equal(b, y + x)
        c = x.clone()
        assert add_(c, y.double()) is not c and add_(c, torch.randn(5, 2, 3, 4)).shape == (5, 2, 3, 4)  # dtype / shape change
    g = x.clone().requires_grad_()
    assert add_(g, y) is not g and act_(torch.nn.SiLU(), g) is not g

    blender = AlphaBlender(0.3, "learned_with_images")
    xs, xt, ind = torch.randn(2, 3, 4, 2, 2), torch.randn(2, 3, 4, 2, 2), torch.zeros(2, 4)
    with torch.no_grad():
        want = blender(xs, xt, ind)
        into = xs.clone()
        got = blender(into, xt.clone(), ind, in_place=True)
    assert torch.equal(got, want) and got is into  # written into x_spatial
    assert blender(xs.clone().requires_grad_(), xt, ind, in_place=True).data_ptr() not in (xs.data_ptr(), xt.data_ptr())

    from diffusers.models.resnet import SpatioTemporalResBlock as RefSpatioTemporalResBlock

    ours = SpatioTemporalResBlock(32, 32, temb_channels=16)
    ref = RefSpatioTemporalResBlock(32, 32, temb_channels=16)
    ref.load_state_dict(ours.state_dict())
    h, temb = torch.randn(4, 32, 4, 4), torch.randn(4, 16)
    outs = []
    for block in (ours, ref):
        hh = h.clone().requires_grad_()
        out = block(hh, temb, image_only_indicator=torch.zeros(2, 2))
        out.square().sum().backward()
        outs.append((out.detach(), hh.grad, block.temporal_res_block.conv1.weight.grad))
    for got, want in zip(*outs):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)  # the reference convolves frames with Conv3d
    from vidiff.runtime import conv, linear

    with torch.no_grad(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(conv, "PACK_WEIGHTS", False)  # the same convolution kernel as with autograd, to compare bit for bit
        mp.setattr(linear, "ONEDNN_LINEAR", False)  # and the same matrix-product kernel
        assert torch.equal(ours(h, temb, image_only_indicator=torch.zeros(2, 2)), outs[0][0])  # in place = out of place
