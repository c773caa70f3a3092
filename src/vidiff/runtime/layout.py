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


PLAIN_GROUP_NORM = True  # GroupNorm runs channels-last CPU maps in the plain layout (False: PyTorch's kernel for them)


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (same arguments, parameters and keys) that normalises a channels-last 4-D CPU map in the
    plain layout: PyTorch's CPU kernel for channels-last maps is 3-10x slower with few channels per group (2-10 in
    the video UNets: 0.6 vs 0.06 ms at 8 x 64 x 16 x 16, 0.7 vs 0.17 ms at 8 x 320 x 16 x 16), more than the copy.
    The output is then plain (the convolutions take either layout); other inputs keep theirs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if PLAIN_GROUP_NORM and x.device.type == "cpu" and is_channels_last(x):
            x = x.contiguous()
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
