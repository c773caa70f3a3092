"""Convolution kernel choice: a wide convolution on a small feature map runs as one matrix product on the CPU.

oneDNN, PyTorch's CPU convolution, reorders the weight into its blocked layout on every call. That costs about
as much as the arithmetic once the weight is large and the map is small, as in the inner blocks of a full-size
UNet at small resolutions (1280 channels at 4x4 or 2x2: 20-50 GFLOP/s on 2 cores, a quarter to a half of what a
matrix product of the same size reaches). There :func:`conv2d` unfolds the input (im2col) and multiplies the weight,
viewed as an ``(out, in*kh*kw)`` matrix without a copy, by it: the same sums in another order (differences around
1e-6 relative), 1.3-3.7x faster at those shapes. On AVX-512 CPUs the product runs through oneDNN's matrix product
where :mod:`vidiff.runtime.linear` measured it the faster one (as on AMD Zen 4 and 5; on an Intel Xeon with AMX
MKL's was).

Every other CPU convolution without autograd on a map of at most :data:`PACK_MAX_POSITIONS` positions
goes to oneDNN with its weight reordered once (:func:`conv2d_packed`): the blocked copy is kept per weight
(:data:`PACK_WEIGHTS`; one extra copy of those convolution weights in memory, rebuilt when the weight or the input
shape changes) and the output comes back channels-last, oneDNN's own layout, which the following layers keep (no
transposes back and forth). Measured in one process, alternating: a t2v-full UNet call 0.85x, t2v-mid and
svd-mid 0.95x; per layer 1.1-1.7x (640 -> 640 at 8x8: 84 -> 142 GFLOP/s). Larger maps (the VAE decoders) keep the
per-call reorder, which their arithmetic hides: there the channels-last path raised svd-mid-256's peak RSS by
50-100 MB. Elsewhere, on other devices and dtypes, with autograd, and under ``torch.compile``, it is ``F.conv2d``.

Both paths take float32 and the half types oneDNN runs natively on the CPU (:data:`DTYPES`: bfloat16 and float16
where ``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` / ``_fp16_`` say so). In bfloat16 the per-call reorder
weighs more, as the arithmetic is faster (Intel Xeon with AMX, 2 cores, 8 frames, 3x3): 1280 -> 1280 at 4x4 99 ->
324 GFLOP/s as a product, at 2x2 28 -> 197; 320 -> 320 at 16x16 485 -> 584-663 with the kept weight, 640 -> 640 at
8x8 260 -> 323-343. t2v-full / svd-full UNet calls in bfloat16 took 0.59-0.64x of the reference's time there
(``bench/steps.py --dtype bfloat16``; 0.935x before), mid-size ones 0.93-1.0x of their time without. float16 (no AMX for it there) gained 1.0-2.6x per layer.

:class:`Conv2d` is ``nn.Conv2d`` (same arguments, parameters and state-dict keys) with its forward going through
:func:`conv2d`; the ResNet blocks, down- and upsamplers build their convolutions with it, and ``FrameConv`` calls
:func:`conv2d`. The choice is on by default (like ``FrameConv``'s): same keys, same results to rounding.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

from .layout import is_channels_last
from .linear import linear, use_onednn


def _dtypes() -> tuple[torch.dtype, ...]:
    """float32, and the half types oneDNN runs natively on this CPU (the convolution paths below take these)."""
    out = [torch.float32]
    if torch.backends.mkldnn.is_available():
        out += [dt for dt, native in ((torch.bfloat16, torch.ops.mkldnn._is_mkldnn_bf16_supported),
                                      (torch.float16, torch.ops.mkldnn._is_mkldnn_fp16_supported)) if native()]
    return tuple(out)


DTYPES = _dtypes()  # the dtypes :func:`conv2d`'s product and kept-weight paths run (others: F.conv2d)

# Measured on 2 cores (AVX2, fp32): the product wins when the output map has at most this many positions
# (batch x height x width) and the weight at least this many elements; below that oneDNN's direct kernel is
# as fast or faster (e.g. 128 channels at 8x8, or 320 channels at 16x16).
GEMM_MAX_POSITIONS = 256
GEMM_MIN_WEIGHT = 1 << 22  # 4.2 M elements, 16 MiB fp32: e.g. 1280 -> 1280 with kernel (3, 1), or 640 -> 1280 3x3
# Where the product goes through oneDNN's matrix product (runtime.linear) the same limits hold: there a
# kept weight (below) is as fast or up to 1.4x faster per call at those shapes, but it would keep a second copy of
# the largest weights (+2.5 GB at t2v-full, reordering them made the first step 5 s longer); the product needs none.


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _out_size(x: torch.Tensor, weight: torch.Tensor, stride, padding) -> tuple[int, int]:
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    kh, kw = weight.shape[2:]
    return (x.shape[2] + 2 * ph - kh) // sh + 1, (x.shape[3] + 2 * pw - kw) // sw + 1


def use_gemm(x: torch.Tensor, weight: torch.Tensor, stride=1, padding=0) -> bool:
    """Whether :func:`conv2d` runs this convolution as a matrix product (CPU, :data:`DTYPES`, big weight, small map)."""
    if x.device.type != "cpu" or x.dtype not in DTYPES or x.dim() != 4 or weight.numel() < GEMM_MIN_WEIGHT:
        return False
    if not weight.is_contiguous():  # a channels-last weight is no (out, in*kh*kw) view: oneDNN takes it as it is
        return False
    oh, ow = _out_size(x, weight, stride, padding)
    return x.shape[0] * oh * ow <= GEMM_MAX_POSITIONS


PACK_WEIGHTS = True  # keep oneDNN's blocked copy of each CPU convolution weight (see the module docstring)
PACK_MAX_POSITIONS = 1 << 12  # input positions (batch x height x width) up to which the kept weight is used
_PACKED: dict[int, tuple] = {}  # id(parameter) -> (key, sample, packed); an entry leaves with its parameter
_MKLDNN = torch.backends.mkldnn.is_available()
_FINGERPRINT = 64  # weight values compared on every call: an edit through ``.data`` does not bump the version


def use_packed(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`conv2d` runs this convolution through oneDNN with a kept, reordered weight."""
    return (PACK_WEIGHTS and not torch.compiler.is_compiling() and _MKLDNN and torch.backends.mkldnn.enabled
            and x.device.type == "cpu" and x.dtype in DTYPES and weight.dtype == x.dtype and x.dim() == 4
            and not torch.is_grad_enabled() and x.shape[0] * x.shape[2] * x.shape[3] <= PACK_MAX_POSITIONS)


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride=1, padding=0,
           param: torch.Tensor | None = None) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride, padding)`` (groups 1, dilation 1), through a matrix product where faster.

    ``param``: the parameter ``weight`` is (a view of); given, its reordered copy may be kept (:func:`conv2d_packed`)."""
    if use_gemm(x, weight, stride, padding):
        return conv2d_gemm(x, weight, bias, stride, padding)
    if param is not None and use_packed(x, weight):
        return conv2d_packed(x, weight, bias, stride, padding, param)
    return F.conv2d(x, weight, bias, stride, padding)


def conv2d_packed(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride, padding,
                  param: torch.Tensor) -> torch.Tensor:
    """The convolution through oneDNN with ``weight`` reordered once and kept for ``param``; channels-last output.

    The kept copy is rebuilt when the parameter's storage, version (in-place updates), strides or a sample of its
    values change (an edit through ``.data``, which bumps no version, still changes the sample), and when the input's
    shape changes: oneDNN picks the blocked layout for the input it is given (a batch of one gets another than a
    larger batch), and a weight kept in the other one is reordered back on every call (20-30x slower at 128
    channels on 8x8). A shape change costs one reorder, the price of a call without a kept weight."""
    stride, padding = list(_pair(stride)), list(_pair(padding))
    flat = weight.reshape(-1)
    sample = flat[:: max(1, flat.numel() // _FINGERPRINT)]
    key = (weight.data_ptr(), param._version, tuple(weight.shape), weight.stride(), tuple(stride), tuple(padding), tuple(x.shape))
    kept = _PACKED.get(id(param))
    if kept is None or kept[0] != key or not torch.equal(kept[1], sample):
        if kept is None:
            weakref.finalize(param, _PACKED.pop, id(param), None)
        packed = torch.ops.mkldnn._reorder_convolution_weight(weight, padding, stride, [1, 1], 1, list(x.shape))
        kept = _PACKED[id(param)] = (key, sample.clone(), packed)
    return torch.ops.mkldnn._convolution_pointwise(x, kept[2], bias, padding, stride, [1, 1], 1, "none", [], "")


def forget_packed() -> None:
    """Drop every kept reordered weight (they are rebuilt on the next call; freed with their parameters anyway)."""
    _PACKED.clear()


def conv2d_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride=1, padding=0) -> torch.Tensor:
    """The convolution as im2col and one matrix product; the output keeps a channels-last input's layout."""
    n = x.shape[0]
    o, _, kh, kw = weight.shape
    oh, ow = _out_size(x, weight, stride, padding)
    cols = F.unfold(x, (kh, kw), padding=_pair(padding), stride=_pair(stride))  # n (c kh kw) (oh ow)
    w = weight.reshape(o, -1)  # o (c kh kw), a view
    if use_onednn(cols, w):  # oneDNN's product (runtime.linear) on rows of taps; the output comes channels-last
        rows = cols.transpose(1, 2).reshape(n * oh * ow, cols.shape[1])  # (n oh ow) (c kh kw)
        out = linear(rows, w, bias).view(n, oh, ow, o).permute(0, 3, 1, 2)  # n o oh ow
    else:
        cols = cols.transpose(0, 1).reshape(cols.shape[1], n * oh * ow)  # (c kh kw) (n oh ow): runs of oh*ow values
        out = torch.mm(w, cols) if bias is None else torch.addmm(bias[:, None], w, cols)  # o (n oh ow)
        out = out.view(o, n, oh, ow).transpose(0, 1)  # n o oh ow
    return out.contiguous(memory_format=torch.channels_last if is_channels_last(x) else torch.contiguous_format)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` whose forward goes through :func:`conv2d` (zero padding, groups 1 and dilation 1; any other
    setting runs ``nn.Conv2d``'s own forward)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.groups != 1 or self.dilation != (1, 1) or self.padding_mode != "zeros" or isinstance(self.padding, str):
            return super().forward(x)
        return conv2d(x, self.weight, self.bias, self.stride, self.padding, param=self.weight)
