"""Convolution kernel choice: a wide convolution on a small feature map runs as one matrix product on the CPU.

oneDNN, PyTorch's CPU convolution, reorders the weight into its blocked layout on every call. That costs about
as much as the arithmetic once the weight is large and the map is small, as in the inner blocks of a full-size
UNet at small resolutions (1280 channels at 4x4 or 2x2: 20-50 GFLOP/s on 2 cores, a quarter to a half of what a
matrix product of the same size reaches). There :func:`conv2d` unfolds the input (im2col) and multiplies the weight,
viewed as an ``(out, in*kh*kw)`` matrix without a copy, by it: the same sums in another order (differences around
1e-6 relative), 1.3-3.7x faster at those shapes. Elsewhere, and on other devices and dtypes, it is ``F.conv2d``.

:class:`Conv2d` is ``nn.Conv2d`` (same arguments, parameters and state-dict keys) with its forward going through
:func:`conv2d`; the ResNet blocks, down- and upsamplers build their convolutions with it, and ``FrameConv`` calls
:func:`conv2d`. The choice is on by default (like ``FrameConv``'s): same keys, same results to rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layout import is_channels_last

# Measured on 2 cores (AVX2, fp32): the product wins when the output map has at most this many positions
# (batch x height x width) and the weight at least this many elements; below that oneDNN's direct kernel is
# as fast or faster (e.g. 128 channels at 8x8, or 320 channels at 16x16).
GEMM_MAX_POSITIONS = 256
GEMM_MIN_WEIGHT = 1 << 22  # 4.2 M elements, 16 MiB fp32: e.g. 1280 -> 1280 with kernel (3, 1), or 640 -> 1280 3x3


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _out_size(x: torch.Tensor, weight: torch.Tensor, stride, padding) -> tuple[int, int]:
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    kh, kw = weight.shape[2:]
    return (x.shape[2] + 2 * ph - kh) // sh + 1, (x.shape[3] + 2 * pw - kw) // sw + 1


def use_gemm(x: torch.Tensor, weight: torch.Tensor, stride=1, padding=0) -> bool:
    """Whether :func:`conv2d` runs this convolution as a matrix product (CPU, float32, big weight, small map)."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 4 or weight.numel() < GEMM_MIN_WEIGHT:
        return False
    if not weight.is_contiguous():  # a channels-last weight is no (out, in*kh*kw) view: oneDNN takes it as it is
        return False
    oh, ow = _out_size(x, weight, stride, padding)
    return x.shape[0] * oh * ow <= GEMM_MAX_POSITIONS


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride=1, padding=0) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride, padding)`` (groups 1, dilation 1), through a matrix product where faster."""
    if use_gemm(x, weight, stride, padding):
        return conv2d_gemm(x, weight, bias, stride, padding)
    return F.conv2d(x, weight, bias, stride, padding)


def conv2d_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride=1, padding=0) -> torch.Tensor:
    """The convolution as im2col and one matrix product; the output keeps a channels-last input's layout."""
    n = x.shape[0]
    o, _, kh, kw = weight.shape
    oh, ow = _out_size(x, weight, stride, padding)
    cols = F.unfold(x, (kh, kw), padding=_pair(padding), stride=_pair(stride))  # n (c kh kw) (oh ow)
    cols = cols.transpose(0, 1).reshape(cols.shape[1], n * oh * ow)  # (c kh kw) (n oh ow): runs of oh*ow values
    w = weight.reshape(o, -1)  # o (c kh kw), a view
    out = torch.mm(w, cols) if bias is None else torch.addmm(bias[:, None], w, cols)  # o (n oh ow)
    out = out.view(o, n, oh, ow).transpose(0, 1)  # n o oh ow
    return out.contiguous(memory_format=torch.channels_last if is_channels_last(x) else torch.contiguous_format)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` whose forward goes through :func:`conv2d` (zero padding, groups 1 and dilation 1; any other
    setting runs ``nn.Conv2d``'s own forward)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.groups != 1 or self.dilation != (1, 1) or self.padding_mode != "zeros" or isinstance(self.padding, str):
            return super().forward(x)
        return conv2d(x, self.weight, self.bias, self.stride, self.padding)
