"""What every UNet down/up block shares, whatever its layers: resnet options, channel plans, the stride-2 down/x2 up
samplers, the down pass (one skip per layer, +1 after the downsampler), the up pass (pop the matching skip, FreeU,
concatenate, layer), the mid pass (resnet, then attention + resnet per layer), and FreeU itself.

A block supplies ``layer(i, hidden_states) -> hidden_states`` (its resnets[i] and whatever follows it) and holds
``resnets`` plus ``downsamplers`` or ``upsamplers`` (``None`` when absent), as the reference's blocks do. The up
pass takes the layer as two stages, ``(resnet, rest)``: the concatenated input (running features + skip, the
widest map of the block) is then freed as soon as the resnet is done, not kept through the attention after it.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from .resnets import Downsample2D, Upsample2D

Layer = Callable[[int, torch.Tensor], torch.Tensor]
Stages = tuple[Layer, Layer]  # (resnet[i] and what must see the concatenated input, the rest of layer i)

# ---------------------------------------------------------------------------------------------- options


def per_layer(value: int | tuple[int, ...] | list[int], num_layers: int, name: str) -> tuple[int, ...]:
    """An int repeated ``num_layers`` times, or a tuple with (at least) one entry per layer, read by index as the
    reference reads it."""
    if isinstance(value, int):
        return (value,) * num_layers
    if len(value) < num_layers:
        raise ValueError(f"{name} must be an integer or a tuple of {num_layers} integers (one per layer), got {value!r}")
    return tuple(value)


def resnet_options(dropout, resnet_eps, resnet_time_scale_shift, resnet_act_fn, resnet_groups, resnet_pre_norm,
                   output_scale_factor) -> dict[str, Any]:
    """The block arguments as ``ResnetBlock2D`` keywords."""
    return dict(
        eps=resnet_eps, groups=resnet_groups, dropout=dropout, time_embedding_norm=resnet_time_scale_shift,
        non_linearity=resnet_act_fn, output_scale_factor=output_scale_factor, pre_norm=resnet_pre_norm,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------- channel plans


def down_channels(in_channels: int, out_channels: int, num_layers: int) -> list[tuple[int, int]]:
    """(in, out) of each down resnet: the first takes the block input, the rest keep the block width."""
    return [(in_channels if i == 0 else out_channels, out_channels) for i in range(num_layers)]


def up_channels(in_channels: int, prev_output_channel: int, out_channels: int, num_layers: int) -> list[tuple[int, int]]:
    """(in, out) of each up resnet: running features concatenated with one skip (the last skip has ``in_channels``)."""
    return [
        ((prev_output_channel if i == 0 else out_channels) + (in_channels if i == num_layers - 1 else out_channels), out_channels)
        for i in range(num_layers)
    ]


def downsamplers(channels: int, add: bool, padding: int = 1) -> nn.ModuleList | None:
    """``downsamplers.0.conv``: a stride-2 conv, or None."""
    if not add:
        return None
    return nn.ModuleList([Downsample2D(channels, use_conv=True, out_channels=channels, padding=padding, name="op")])


def upsamplers(channels: int, add: bool) -> nn.ModuleList | None:
    """``upsamplers.0.conv``: nearest x2 then a conv, or None."""
    return nn.ModuleList([Upsample2D(channels, use_conv=True, out_channels=channels)]) if add else None


# ---------------------------------------------------------------------------------------------- passes


def down_pass(block: nn.Module, hidden_states: torch.Tensor, layer: Layer) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Run every layer, keeping each output as a skip, then the downsampler (whose output is one more skip)."""
    output_states: tuple[torch.Tensor, ...] = ()
    for i in range(len(block.resnets)):
        hidden_states = layer(i, hidden_states)
        output_states += (hidden_states,)
    if block.downsamplers is not None:
        for downsampler in block.downsamplers:
            hidden_states = downsampler(hidden_states)
        output_states += (hidden_states,)
    return hidden_states, output_states


def up_pass(block: nn.Module, hidden_states: torch.Tensor, res_hidden_states_tuple: tuple[torch.Tensor, ...], stages: Stages,
            upsample_size=None) -> torch.Tensor:
    """Per layer: pop the matching skip (last first), FreeU if the block has its factors, concatenate, run the layer's
    two stages; then the upsampler."""
    first, rest = stages
    s1, s2, b1, b2 = (getattr(block, name, None) for name in ("s1", "s2", "b1", "b2"))
    freeu = s1 and s2 and b1 and b2
    for i in range(len(block.resnets)):
        res_hidden_states = res_hidden_states_tuple[-1]
        res_hidden_states_tuple = res_hidden_states_tuple[:-1]
        if freeu:
            hidden_states, res_hidden_states = apply_freeu(block.resolution_idx, hidden_states, res_hidden_states,
                                                           s1=s1, s2=s2, b1=b1, b2=b2)
        # b (c+skip) h w, passed without a name here: it is freed when the first stage returns
        hidden_states = first(i, torch.cat([hidden_states, res_hidden_states], dim=1))
        hidden_states = rest(i, hidden_states)
    if block.upsamplers is not None:
        for upsampler in block.upsamplers:
            hidden_states = upsampler(hidden_states, upsample_size)
    return hidden_states


def mid_pass(hidden_states: torch.Tensor, num_layers: int, resnet: Layer, attend: Layer) -> torch.Tensor:
    """The mid block: ``resnet(0)``, then per layer ``i``: ``attend(i)`` (attention and whatever follows it), ``resnet(i + 1)``."""
    hidden_states = resnet(0, hidden_states)
    for i in range(num_layers):
        hidden_states = resnet(i + 1, attend(i, hidden_states))
    return hidden_states


# ---------------------------------------------------------------------------------------------- FreeU


def fourier_filter(x_in: torch.Tensor, threshold: int, scale: float) -> torch.Tensor:
    """Scale the lowest spatial frequencies (a 2*threshold square around DC) of a b c h w map by ``scale``."""
    x = x_in.to(torch.float32)  # FFT in float32 whatever the input dtype, as the reference does
    freq = torch.fft.fftshift(torch.fft.fftn(x, dim=(-2, -1)), dim=(-2, -1))
    h, w = freq.shape[-2:]
    mask = torch.ones((h, w), device=x.device)
    crow, ccol = h // 2, w // 2
    mask[crow - threshold : crow + threshold, ccol - threshold : ccol + threshold] = scale
    freq = torch.fft.ifftshift(freq * mask, dim=(-2, -1))
    return torch.fft.ifftn(freq, dim=(-2, -1)).real.to(x_in.dtype)


def apply_freeu(
    resolution_idx: int | None, hidden_states: torch.Tensor, res_hidden_states: torch.Tensor,
    s1: float, s2: float, b1: float, b2: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """FreeU (arXiv 2309.11497) on up stages 0 and 1: amplify half the backbone channels, damp skip low frequencies."""
    if resolution_idx not in (0, 1):
        return hidden_states, res_hidden_states
    b, s = (b1, s1) if resolution_idx == 0 else (b2, s2)
    half = hidden_states.shape[1] // 2
    hidden_states = torch.cat([hidden_states[:, :half] * b, hidden_states[:, half:]], dim=1)
    return hidden_states, fourier_filter(res_hidden_states, threshold=1, scale=s)


class FreeUMixin:
    """``enable_freeu`` / ``disable_freeu`` for a UNet whose ``up_blocks`` read ``s1, s2, b1, b2``."""

    def enable_freeu(self, s1: float, s2: float, b1: float, b2: float) -> None:
        """s1, s2 damp the skip features of up stages 0 and 1; b1, b2 amplify their backbone features."""
        for block in self.up_blocks:  # type: ignore[attr-defined]
            block.s1, block.s2, block.b1, block.b2 = s1, s2, b1, b2

    def disable_freeu(self) -> None:
        for block in self.up_blocks:  # type: ignore[attr-defined]
            block.s1 = block.s2 = block.b1 = block.b2 = None
