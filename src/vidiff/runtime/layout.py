"""Memory layout: channels-last weights and activations for the convolutions (NHWC), applied explicitly.

    from vidiff.runtime.layout import channels_last
    channels_last(pipe.unet); channels_last(pipe.vae)

PyTorch's own ``module.to(memory_format=torch.channels_last)`` refuses the video UNets (their frame convolutions
have 5-D weights); :func:`channels_last` stores 4-D weights ``channels_last`` and 5-D ones ``channels_last_3d``, the
layout in which a frame convolution's ``(o, i, k, 1, 1)`` weight is a channels-last ``(o, i, k, 1)`` 2-D kernel.
Values, keys and dtypes stay as they were; the layers keep an input's layout through their reshapes, so a UNet
whose first convolution sees channels-last weights runs channels-last to its output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_FORMATS = {4: torch.channels_last, 5: torch.channels_last_3d}


def channels_last(module: nn.Module) -> nn.Module:
    """Store ``module``'s 4-D and 5-D parameters channels-last (in place); returns the module."""
    with torch.no_grad():
        for sub in module.modules():
            for name, param in list(sub.named_parameters(recurse=False)):
                fmt = _FORMATS.get(param.dim())
                if fmt is not None and not param.is_contiguous(memory_format=fmt):
                    sub._parameters[name] = nn.Parameter(param.contiguous(memory_format=fmt), requires_grad=param.requires_grad)
    return module


def is_channels_last(x: torch.Tensor) -> bool:
    """True for a 4-D tensor laid out channels-last (and not also plainly contiguous, as when c or h*w is 1)."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def tokens_to_map(x: torch.Tensor, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """(b, h*w, c) tokens -> (b, c, h, w) map, laid out as ``like`` (channels-last: a free view, else one copy)."""
    x = x.reshape(x.shape[0], h, w, -1).permute(0, 3, 1, 2)  # b c h w, channels-last strides
    return x if is_channels_last(like) else x.contiguous()


PLAIN_GROUP_NORM = True  # GroupNorm runs small channels-last CPU maps in the plain layout (False: never)
# PyTorch's CPU GroupNorm kernel for channels-last maps is slow on small maps with few channels per group, and fast
# on large ones (2 cores, fp32, plain = copy + plain kernel): 8x64x16x16 0.64 vs 0.19 ms, 8x128x8x8 0.17 vs 0.10,
# 16x320x16x16 2.4 vs 1.8; but 8x1280x8x8 (40 channels per group) 0.25 vs 0.83, 8x64x32x32 0.16 vs 0.55,
# 2x128x128x128 1.8 vs 12.7 (and the copy would add a map to the peak).
PLAIN_MAX_POSITIONS = 256  # h * w
PLAIN_MAX_GROUP_CHANNELS = 16


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (same arguments, parameters and keys) that normalises a small channels-last CPU map (at most
    :data:`PLAIN_MAX_POSITIONS` positions, :data:`PLAIN_MAX_GROUP_CHANNELS` channels per group: the video UNets'
    inner blocks) in the plain layout, where PyTorch's channels-last kernel is slower than the copy (see above). The
    output is then plain (the convolutions take either layout); other inputs keep theirs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (PLAIN_GROUP_NORM and x.device.type == "cpu" and x.shape[-1] * x.shape[-2] <= PLAIN_MAX_POSITIONS
                and self.num_channels // self.num_groups <= PLAIN_MAX_GROUP_CHANNELS and is_channels_last(x)):
            x = x.contiguous()
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
