"""Stable Diffusion UNet blocks: resnets interleaved with spatial transformers (and, for AnimateDiff, motion modules).

Every layer of a block runs ``resnets[i] (-> attentions[i]) (-> motion_modules[i])`` on ``b c h w`` maps
(``(b f) c h w`` for the motion blocks of :mod:`vidiff.layers.motion`, which reuse these bodies). Keys match
the reference: ``attentions``, ``resnets``, ``motion_modules``, ``downsamplers.0.conv``, ``upsamplers.0.conv``,
registered in the reference's order so ``state_dict`` and ``attn_processors`` list the same keys in the same order.

Usage::

    block = get_down_block("CrossAttnDownBlock2D", num_layers=2, in_channels=320, out_channels=320, temb_channels=1280,
                           add_downsample=True, resnet_eps=1e-5, resnet_act_fn="silu", num_attention_heads=8,
                           resnet_groups=32, cross_attention_dim=768, attention_head_dim=8)
    h, skips = block(h, temb, encoder_hidden_states=text)   # (b, 320, H, W) -> (b, 320, H/2, W/2), 3 skips
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from .resnets import ResnetBlock2D
from .transformers import Transformer2DModel
from .unet_passes import down_channels, down_pass, downsamplers, mid_pass, per_layer, resnet_options, up_channels, up_pass, upsamplers
from .vae_blocks import UNetMidBlock2D

# A factory for the temporal module after layer ``i`` of width ``channels`` (see layers/motion.py).
MotionFactory = Callable[[int, int], nn.Module]


def attention_options(num_attention_heads, cross_attention_dim, use_linear_projection, upcast_attention,
                      attention_type, dual_cross_attention, only_cross_attention=False) -> dict[str, Any]:
    """The block arguments as ``Transformer2DModel`` keywords (``num_attention_heads`` heads over the width)."""
    if dual_cross_attention:
        raise NotImplementedError(
            "dual_cross_attention=True (Versatile Diffusion's DualTransformer2DModel) is not supported by vidiff; "
            "SD 1.5-family UNets use dual_cross_attention=False."
        )
    if attention_type != "default":
        raise NotImplementedError(f"attention_type={attention_type!r} (GLIGEN) is not supported by vidiff; use 'default'")
    return dict(
        num_attention_heads=num_attention_heads, cross_attention_dim=cross_attention_dim,
        use_linear_projection=use_linear_projection, upcast_attention=upcast_attention,
        only_cross_attention=only_cross_attention,
    )  # fmt: skip


class UNetBlock2DBase(nn.Module):
    """Holds the per-layer module lists and runs one layer; subclasses say which channels go where."""

    has_cross_attention = False
    has_motion = False

    @property
    def needs_num_frames(self) -> bool:
        """Whether ``forward`` takes ``num_frames`` (the motion blocks)."""
        return self.has_motion

    # The mid block runs one resnet before its first attention; the others pair every resnet with its modules.
    _resnet_first_extra = False

    def _build_layers(
        self,
        io: list[tuple[int, int]],
        temb_channels: int,
        resnet: dict[str, Any],
        attention: dict[str, Any] | None = None,
        transformer_layers: int | tuple[int, ...] = 1,
        motion: MotionFactory | None = None,
        groups_out: int | None = None,
    ) -> None:
        """Register ``attentions``, ``resnets`` (one per (in, out) pair) and ``motion_modules``, in that order.

        Modules are created layer by layer in the reference's order, so a seeded random init matches it too.
        """
        inner_groups = groups_out or resnet["groups"]  # the mid block may normalise its output with other groups
        extra = int(self._resnet_first_extra)
        layers = per_layer(transformer_layers, len(io) - extra, "transformer_layers_per_block")
        resnets, attentions, motion_modules = [], [], []

        def add_resnet(i: int) -> None:
            groups = {"groups_out": inner_groups} if i == 0 else {"groups": inner_groups}
            cin, cout = io[i]
            resnets.append(ResnetBlock2D(in_channels=cin, out_channels=cout, temb_channels=temb_channels, **dict(resnet, **groups)))

        if extra:
            add_resnet(0)
        for j in range(len(io) - extra):
            width = io[j + extra][1]
            if not extra:
                add_resnet(j)
            if attention is not None:
                attentions.append(_transformer(width, inner_groups, layers[j], **attention))
            if extra:
                add_resnet(j + extra)
            if motion is not None:
                motion_modules.append(motion(width, j))
        if attention is not None:
            self.has_cross_attention = True
            self.num_attention_heads = attention["num_attention_heads"]
            self.attentions = nn.ModuleList(attentions)
        self.resnets = nn.ModuleList(resnets)
        if motion is not None:
            self.has_motion = True
            self.motion_modules = nn.ModuleList(motion_modules)
        self.gradient_checkpointing = False

    def _layer(self, i: int, hidden_states: torch.Tensor, temb, cond: dict[str, Any], num_frames: int) -> torch.Tensor:
        """resnets[i] -> attentions[i] -> motion_modules[i] (those present)."""
        return self._after_resnet(i, self.resnets[i](hidden_states, temb), cond, num_frames)

    def _after_resnet(self, i: int, hidden_states: torch.Tensor, cond: dict[str, Any], num_frames: int) -> torch.Tensor:
        if self.has_cross_attention:
            hidden_states = self.attentions[i](hidden_states, **cond, return_dict=False)[0]
        if self.has_motion:
            hidden_states = self.motion_modules[i](hidden_states, num_frames=num_frames)
        return hidden_states


def _transformer(width: int, groups: int, num_layers: int, *, num_attention_heads: int, **options) -> Transformer2DModel:
    return Transformer2DModel(
        num_attention_heads, width // num_attention_heads, in_channels=width, num_layers=num_layers,
        norm_num_groups=groups, **options,
    )  # fmt: skip


def transformer_inputs(encoder_hidden_states, attention_mask, cross_attention_kwargs, encoder_attention_mask) -> dict[str, Any]:
    """The keywords every spatial transformer of a block receives."""
    return dict(
        encoder_hidden_states=encoder_hidden_states, cross_attention_kwargs=cross_attention_kwargs,
        attention_mask=attention_mask, encoder_attention_mask=encoder_attention_mask,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------- down


class DownBlockBase(UNetBlock2DBase):
    """``num_layers`` layers then an optional stride-2 conv; returns the output and one skip per layer (+1)."""

    def _build_down(self, in_channels, out_channels, num_layers, temb_channels, resnet, add_downsample, padding,
                    attention=None, transformer_layers=1, motion=None) -> None:
        io = down_channels(in_channels, out_channels, num_layers)
        self._build_layers(io, temb_channels, resnet, attention, transformer_layers, motion)
        self.downsamplers = downsamplers(out_channels, add_downsample, padding)

    def _run_down(self, hidden_states, temb, cond=None, num_frames: int = 1, additional_residuals=None):
        last = len(self.resnets) - 1

        def layer(i, h):
            h = self._layer(i, h, temb, cond or {}, num_frames)
            if i == last and additional_residuals is not None:  # T2I-Adapter features join after the last layer
                h = h + additional_residuals
            return h

        return down_pass(self, hidden_states, layer)


class DownBlock2D(DownBlockBase):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        dropout: float = 0.0,
        num_layers: int = 1,
        resnet_eps: float = 1e-6,
        resnet_time_scale_shift: str = "default",
        resnet_act_fn: str = "swish",
        resnet_groups: int = 32,
        resnet_pre_norm: bool = True,
        output_scale_factor: float = 1.0,
        add_downsample: bool = True,
        downsample_padding: int = 1,
    ):
        super().__init__()
        resnet = resnet_options(dropout, resnet_eps, resnet_time_scale_shift, resnet_act_fn, resnet_groups, resnet_pre_norm,
                                output_scale_factor)
        self._build_down(in_channels, out_channels, num_layers, temb_channels, resnet, add_downsample, downsample_padding)

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None, *args, **kwargs):
        return self._run_down(hidden_states, temb)


class CrossAttnDownBlock2D(DownBlockBase):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        dropout: float = 0.0,
        num_layers: int = 1,
        transformer_layers_per_block: int | tuple[int, ...] = 1,
        resnet_eps: float = 1e-6,
        resnet_time_scale_shift: str = "default",
        resnet_act_fn: str = "swish",
        resnet_groups: int = 32,
        resnet_pre_norm: bool = True,
        num_attention_heads: int = 1,
        cross_attention_dim: int = 1280,
        output_scale_factor: float = 1.0,
        downsample_padding: int = 1,
        add_downsample: bool = True,
        dual_cross_attention: bool = False,
        use_linear_projection: bool = False,
        only_cross_attention: bool = False,
        upcast_attention: bool = False,
        attention_type: str = "default",
    ):
        super().__init__()
        resnet = resnet_options(dropout, resnet_eps, resnet_time_scale_shift, resnet_act_fn, resnet_groups, resnet_pre_norm,
                                output_scale_factor)
        attention = attention_options(num_attention_heads, cross_attention_dim, use_linear_projection, upcast_attention,
                                      attention_type, dual_cross_attention, only_cross_attention)
        self._build_down(in_channels, out_channels, num_layers, temb_channels, resnet, add_downsample, downsample_padding,
                         attention, transformer_layers_per_block)

    def forward(
        self,
        hidden_states: torch.Tensor,
        temb: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        additional_residuals: torch.Tensor | None = None,
    ):
        cond = transformer_inputs(encoder_hidden_states, attention_mask, cross_attention_kwargs, encoder_attention_mask)
        return self._run_down(hidden_states, temb, cond, additional_residuals=additional_residuals)


# ---------------------------------------------------------------------------------------------- mid


class MidBlockBase(UNetBlock2DBase):
    """resnet, then ``num_layers`` x (attention (-> motion module) -> resnet)."""

    _resnet_first_extra = True

    def _run_mid(self, hidden_states, temb, cond, num_frames: int = 1) -> torch.Tensor:
        def attend(i, h):
            h = self.attentions[i](h, **cond, return_dict=False)[0]
            return self.motion_modules[i](h, num_frames=num_frames) if self.has_motion else h

        return mid_pass(hidden_states, len(self.attentions), lambda i, h: self.resnets[i](h, temb), attend)


class UNetMidBlock2DCrossAttn(MidBlockBase):
    def __init__(
        self,
        in_channels: int,
        temb_channels: int,
        out_channels: int | None = None,
        dropout: float = 0.0,
        num_layers: int = 1,
        transformer_layers_per_block: int | tuple[int, ...] = 1,
        resnet_eps: float = 1e-6,
        resnet_time_scale_shift: str = "default",
        resnet_act_fn: str = "swish",
        resnet_groups: int = 32,
        resnet_groups_out: int | None = None,
        resnet_pre_norm: bool = True,
        num_attention_heads: int = 1,
        output_scale_factor: float = 1.0,
        cross_attention_dim: int = 1280,
        dual_cross_attention: bool = False,
        use_linear_projection: bool = False,
        upcast_attention: bool = False,
        attention_type: str = "default",
    ):
        super().__init__()
        out_channels = out_channels or in_channels
        self.in_channels, self.out_channels = in_channels, out_channels
        resnet_groups = resnet_groups if resnet_groups is not None else min(in_channels // 4, 32)
        resnet = resnet_options(dropout, resnet_eps, resnet_time_scale_shift, resnet_act_fn, resnet_groups, resnet_pre_norm,
                                output_scale_factor)
        attention = attention_options(num_attention_heads, cross_attention_dim, use_linear_projection, upcast_attention,
                                      attention_type, dual_cross_attention)
        io = [(in_channels, out_channels)] + [(out_channels, out_channels)] * num_layers
        self._build_layers(io, temb_channels, resnet, attention, transformer_layers_per_block, groups_out=resnet_groups_out or resnet_groups)

    def forward(
        self,
        hidden_states: torch.Tensor,
        temb: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        cond = transformer_inputs(encoder_hidden_states, attention_mask, cross_attention_kwargs, encoder_attention_mask)
        return self._run_mid(hidden_states, temb, cond)


# ---------------------------------------------------------------------------------------------- up


class UpBlockBase(UNetBlock2DBase):
    """``num_layers`` x (concat the matching skip -> layer), then an optional x2 upsampler. FreeU-aware."""

    def _build_up(self, in_channels, prev_output_channel, out_channels, num_layers, temb_channels, resnet, add_upsample,
                  resolution_idx, attention=None, transformer_layers=1, motion=None) -> None:
        io = up_channels(in_channels, prev_output_channel, out_channels, num_layers)
        self._build_layers(io, temb_channels, resnet, attention, transformer_layers, motion)
        self.upsamplers = upsamplers(out_channels, add_upsample)
        self.resolution_idx = resolution_idx
        self.s1 = self.s2 = self.b1 = self.b2 = None  # FreeU factors, set by the UNet's enable_freeu

    def _run_up(self, hidden_states, res_hidden_states_tuple, temb, upsample_size=None, cond=None, num_frames: int = 1):
        def resnet(i, h):  # h: b (c+skip) h w
            return self.resnets[i](h, temb)

        def rest(i, h):
            return self._after_resnet(i, h, cond or {}, num_frames)

        return up_pass(self, hidden_states, res_hidden_states_tuple, (resnet, rest), upsample_size)


class UpBlock2D(UpBlockBase):
    def __init__(
        self,
        in_channels: int,
        prev_output_channel: int,
        out_channels: int,
        temb_channels: int,
        resolution_idx: int | None = None,
        dropout: float = 0.0,
        num_layers: int = 1,
        resnet_eps: float = 1e-6,
        resnet_time_scale_shift: str = "default",
        resnet_act_fn: str = "swish",
        resnet_groups: int = 32,
        resnet_pre_norm: bool = True,
        output_scale_factor: float = 1.0,
        add_upsample: bool = True,
    ):
        super().__init__()
        resnet = resnet_options(dropout, resnet_eps, resnet_time_scale_shift, resnet_act_fn, resnet_groups, resnet_pre_norm,
                                output_scale_factor)
        self._build_up(in_channels, prev_output_channel, out_channels, num_layers, temb_channels, resnet, add_upsample, resolution_idx)

    def forward(self, hidden_states: torch.Tensor, res_hidden_states_tuple: tuple[torch.Tensor, ...],
                temb: torch.Tensor | None = None, upsample_size: int | None = None, *args, **kwargs) -> torch.Tensor:
        return self._run_up(hidden_states, res_hidden_states_tuple, temb, upsample_size)


class CrossAttnUpBlock2D(UpBlockBase):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        prev_output_channel: int,
        temb_channels: int,
        resolution_idx: int | None = None,
        dropout: float = 0.0,
        num_layers: int = 1,
        transformer_layers_per_block: int | tuple[int, ...] = 1,
        resnet_eps: float = 1e-6,
        resnet_time_scale_shift: str = "default",
        resnet_act_fn: str = "swish",
        resnet_groups: int = 32,
        resnet_pre_norm: bool = True,
        num_attention_heads: int = 1,
        cross_attention_dim: int = 1280,
        output_scale_factor: float = 1.0,
        add_upsample: bool = True,
        dual_cross_attention: bool = False,
        use_linear_projection: bool = False,
        only_cross_attention: bool = False,
        upcast_attention: bool = False,
        attention_type: str = "default",
    ):
        super().__init__()
        resnet = resnet_options(dropout, resnet_eps, resnet_time_scale_shift, resnet_act_fn, resnet_groups, resnet_pre_norm,
                                output_scale_factor)
        attention = attention_options(num_attention_heads, cross_attention_dim, use_linear_projection, upcast_attention,
                                      attention_type, dual_cross_attention, only_cross_attention)
        self._build_up(in_channels, prev_output_channel, out_channels, num_layers, temb_channels, resnet, add_upsample,
                       resolution_idx, attention, transformer_layers_per_block)

    def forward(
        self,
        hidden_states: torch.Tensor,
        res_hidden_states_tuple: tuple[torch.Tensor, ...],
        temb: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        upsample_size: int | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        cond = transformer_inputs(encoder_hidden_states, attention_mask, cross_attention_kwargs, encoder_attention_mask)
        return self._run_up(hidden_states, res_hidden_states_tuple, temb, upsample_size, cond)


# ---------------------------------------------------------------------------------------------- factories

DOWN_BLOCKS = {"DownBlock2D": DownBlock2D, "CrossAttnDownBlock2D": CrossAttnDownBlock2D}
UP_BLOCKS = {"UpBlock2D": UpBlock2D, "CrossAttnUpBlock2D": CrossAttnUpBlock2D}
MID_BLOCKS = ("UNetMidBlock2DCrossAttn", "UNetMidBlock2D", None)


def block_class(kind: str, block_type: str, known: dict[str, type]) -> type:
    """The block class for a config name (``UNetRes`` prefixes dropped, as the reference does)."""
    name = block_type[7:] if block_type.startswith("UNetRes") else block_type
    if name not in known:
        raise NotImplementedError(
            f"{kind} block type {block_type!r} is not supported by vidiff's SD UNet; supported: {sorted(known)} "
            "(the Stable Diffusion 1.x/2.x block types)."
        )
    return known[name]


def get_down_block(down_block_type: str, num_layers: int, in_channels: int, out_channels: int, temb_channels: int,
                   add_downsample: bool, resnet_eps: float, resnet_act_fn: str, transformer_layers_per_block=1,
                   num_attention_heads: int | None = None, resnet_groups: int | None = None,
                   cross_attention_dim: int | None = None, downsample_padding: int | None = None,
                   dual_cross_attention: bool = False, use_linear_projection: bool = False,
                   only_cross_attention: bool = False, upcast_attention: bool = False,
                   resnet_time_scale_shift: str = "default", attention_type: str = "default", dropout: float = 0.0,
                   **_unused: Any) -> DownBlockBase:
    """A down block by name, with the reference factory's arguments (options of other block types are ignored)."""
    cls = block_class("down", down_block_type, DOWN_BLOCKS)
    kwargs: dict[str, Any] = dict(
        num_layers=num_layers, in_channels=in_channels, out_channels=out_channels, temb_channels=temb_channels,
        dropout=dropout, add_downsample=add_downsample, resnet_eps=resnet_eps, resnet_act_fn=resnet_act_fn,
        resnet_groups=resnet_groups, downsample_padding=downsample_padding, resnet_time_scale_shift=resnet_time_scale_shift,
    )  # fmt: skip
    if cls is CrossAttnDownBlock2D:
        if cross_attention_dim is None:
            raise ValueError("cross_attention_dim must be specified for CrossAttnDownBlock2D")
        kwargs.update(
            transformer_layers_per_block=transformer_layers_per_block, num_attention_heads=num_attention_heads,
            cross_attention_dim=cross_attention_dim, dual_cross_attention=dual_cross_attention,
            use_linear_projection=use_linear_projection, only_cross_attention=only_cross_attention,
            upcast_attention=upcast_attention, attention_type=attention_type,
        )  # fmt: skip
    return cls(**kwargs)


def get_mid_block(mid_block_type: str | None, temb_channels: int, in_channels: int, resnet_eps: float,
                  resnet_act_fn: str, resnet_groups: int, output_scale_factor: float = 1.0,
                  transformer_layers_per_block=1, num_attention_heads: int | None = None,
                  cross_attention_dim: int | None = None, dual_cross_attention: bool = False,
                  use_linear_projection: bool = False, upcast_attention: bool = False,
                  resnet_time_scale_shift: str = "default", attention_type: str = "default", dropout: float = 0.0,
                  **_unused: Any) -> nn.Module | None:
    """The mid block by name: ``UNetMidBlock2DCrossAttn``, ``UNetMidBlock2D`` (a single resnet) or None."""
    if mid_block_type == "UNetMidBlock2DCrossAttn":
        return UNetMidBlock2DCrossAttn(
            in_channels=in_channels, temb_channels=temb_channels, dropout=dropout, resnet_eps=resnet_eps,
            resnet_act_fn=resnet_act_fn, output_scale_factor=output_scale_factor,
            resnet_time_scale_shift=resnet_time_scale_shift, cross_attention_dim=cross_attention_dim,
            num_attention_heads=num_attention_heads, resnet_groups=resnet_groups,
            dual_cross_attention=dual_cross_attention, use_linear_projection=use_linear_projection,
            upcast_attention=upcast_attention, attention_type=attention_type,
            transformer_layers_per_block=transformer_layers_per_block,
        )  # fmt: skip
    if mid_block_type == "UNetMidBlock2D":
        return UNetMidBlock2D(
            in_channels=in_channels, temb_channels=temb_channels, dropout=dropout, num_layers=0, resnet_eps=resnet_eps,
            resnet_act_fn=resnet_act_fn, output_scale_factor=output_scale_factor, resnet_groups=resnet_groups,
            resnet_time_scale_shift=resnet_time_scale_shift, add_attention=False,
        )  # fmt: skip
    if mid_block_type is None:
        return None
    raise NotImplementedError(f"mid_block_type {mid_block_type!r} is not supported by vidiff; use one of {list(MID_BLOCKS)}")


def get_up_block(up_block_type: str, num_layers: int, in_channels: int, out_channels: int, prev_output_channel: int,
                 temb_channels: int, add_upsample: bool, resnet_eps: float, resnet_act_fn: str,
                 resolution_idx: int | None = None, transformer_layers_per_block=1,
                 num_attention_heads: int | None = None, resnet_groups: int | None = None,
                 cross_attention_dim: int | None = None, dual_cross_attention: bool = False,
                 use_linear_projection: bool = False, only_cross_attention: bool = False,
                 upcast_attention: bool = False, resnet_time_scale_shift: str = "default",
                 attention_type: str = "default", dropout: float = 0.0, **_unused: Any) -> UpBlockBase:
    """An up block by name, with the reference factory's arguments (options of other block types are ignored)."""
    cls = block_class("up", up_block_type, UP_BLOCKS)
    kwargs: dict[str, Any] = dict(
        num_layers=num_layers, in_channels=in_channels, out_channels=out_channels, prev_output_channel=prev_output_channel,
        temb_channels=temb_channels, resolution_idx=resolution_idx, dropout=dropout, add_upsample=add_upsample,
        resnet_eps=resnet_eps, resnet_act_fn=resnet_act_fn, resnet_groups=resnet_groups,
        resnet_time_scale_shift=resnet_time_scale_shift,
    )  # fmt: skip
    if cls is CrossAttnUpBlock2D:
        if cross_attention_dim is None:
            raise ValueError("cross_attention_dim must be specified for CrossAttnUpBlock2D")
        kwargs.update(
            transformer_layers_per_block=transformer_layers_per_block, num_attention_heads=num_attention_heads,
            cross_attention_dim=cross_attention_dim, dual_cross_attention=dual_cross_attention,
            use_linear_projection=use_linear_projection, only_cross_attention=only_cross_attention,
            upcast_attention=upcast_attention, attention_type=attention_type,
        )  # fmt: skip
    return cls(**kwargs)
