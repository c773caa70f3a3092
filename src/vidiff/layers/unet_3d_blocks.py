"""ModelScope-style 3-D UNet blocks: 2-D resnets and transformers on folded frames, interleaved with temporal layers.

Every layer of a block is ``resnets[i] -> temp_convs[i] (-> attentions[i] -> temp_attentions[i])`` on
``(b f) c h w`` tensors; keys match the reference (``resnets``, ``temp_convs``, ``attentions``,
``temp_attentions``, ``downsamplers``, ``upsamplers``). The down/up passes are :mod:`vidiff.layers.unet_passes`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .resnets import ResnetBlock2D
from .temporal import TemporalConvLayer
from .transformers import Transformer2DModel, TransformerTemporalModel
from .unet_passes import down_channels, down_pass, downsamplers, mid_pass, resnet_options, up_channels, up_pass, upsamplers

# ---------------------------------------------------------------------------------------------- shared body


def _attention_kwargs(heads, cross_attention_dim, linear, only_cross, upcast, count) -> dict[str, Any]:
    # ``heads`` is the per-head width (the config's historical ``attention_head_dim``), as in the reference.
    return dict(
        heads=heads, cross_attention_dim=cross_attention_dim, use_linear_projection=linear,
        only_cross_attention=only_cross, upcast_attention=upcast, count=count,
    )  # fmt: skip


class _Block3D(nn.Module):
    """Holds the per-layer module lists and runs one layer; subclasses only say which channels go where."""

    has_cross_attention = False
    needs_num_frames = True  # the temporal layers' forward takes num_frames

    def _build_layers(self, channels: list[tuple[int, int]], temb_channels: int, resnet: dict, attention: dict | None):
        groups = resnet["groups"]
        self.resnets = nn.ModuleList(
            ResnetBlock2D(in_channels=cin, out_channels=cout, temb_channels=temb_channels, **resnet)
            for cin, cout in channels
        )
        self.temp_convs = nn.ModuleList(TemporalConvLayer(c, c, dropout=0.1, norm_num_groups=groups) for _, c in channels)
        if attention is None:
            return
        self.has_cross_attention = True
        self.num_attention_heads = heads = attention["heads"]
        c, cross = channels[-1][1], attention["cross_attention_dim"]  # every attended layer has the block's width
        self.attentions = nn.ModuleList(
            Transformer2DModel(
                c // heads, heads, in_channels=c, num_layers=1, cross_attention_dim=cross, norm_num_groups=groups,
                use_linear_projection=attention["use_linear_projection"],
                only_cross_attention=attention["only_cross_attention"], upcast_attention=attention["upcast_attention"],
            )  # fmt: skip
            for _ in range(attention["count"])
        )
        self.temp_attentions = nn.ModuleList(
            TransformerTemporalModel(c // heads, heads, in_channels=c, num_layers=1, cross_attention_dim=cross,
                                     norm_num_groups=groups)
            for _ in range(attention["count"])
        )

    def _resnet_step(self, i: int, hidden_states, temb, num_frames: int) -> torch.Tensor:
        hidden_states = self.resnets[i](hidden_states, temb)
        return self.temp_convs[i](hidden_states, num_frames=num_frames)

    def _attention_step(self, i: int, hidden_states, encoder_hidden_states, num_frames: int, cross_attention_kwargs):
        kwargs = dict(cross_attention_kwargs=cross_attention_kwargs, return_dict=False)
        hidden_states = self.attentions[i](hidden_states, encoder_hidden_states=encoder_hidden_states, **kwargs)[0]
        return self.temp_attentions[i](hidden_states, num_frames=num_frames, **kwargs)[0]

    def _layer(self, i, hidden_states, temb, num_frames, encoder_hidden_states, cross_attention_kwargs):
        hidden_states = self._resnet_step(i, hidden_states, temb, num_frames)
        if self.has_cross_attention:
            hidden_states = self._attention_step(i, hidden_states, encoder_hidden_states, num_frames,
                                                 cross_attention_kwargs)
        return hidden_states


# ---------------------------------------------------------------------------------------------- down


class _DownBlock3DBase(_Block3D):
    def _build_down(self, in_channels, out_channels, num_layers, temb_channels, resnet, attention, add_down, padding):
        self._build_layers(down_channels(in_channels, out_channels, num_layers), temb_channels, resnet, attention)
        self.downsamplers = downsamplers(out_channels, add_down, padding)
        self.gradient_checkpointing = False

    def _run_down(self, hidden_states, temb, num_frames, encoder_hidden_states=None, cross_attention_kwargs=None):
        def layer(i, h):
            return self._layer(i, h, temb, num_frames, encoder_hidden_states, cross_attention_kwargs)

        return down_pass(self, hidden_states, layer)


class DownBlock3D(_DownBlock3DBase):
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
        resnet = resnet_options(dropout, resnet_eps, resnet_time_scale_shift, resnet_act_fn, resnet_groups,
                                resnet_pre_norm, output_scale_factor)
        self._build_down(in_channels, out_channels, num_layers, temb_channels, resnet, None, add_downsample,
                         downsample_padding)

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None, num_frames: int = 1):
        return self._run_down(hidden_states, temb, num_frames)


class CrossAttnDownBlock3D(_DownBlock3DBase):
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
        num_attention_heads: int = 1,
        cross_attention_dim: int = 1280,
        output_scale_factor: float = 1.0,
        downsample_padding: int = 1,
        add_downsample: bool = True,
        dual_cross_attention: bool = False,
        use_linear_projection: bool = False,
        only_cross_attention: bool = False,
        upcast_attention: bool = False,
    ):
        super().__init__()
        resnet = resnet_options(dropout, resnet_eps, resnet_time_scale_shift, resnet_act_fn, resnet_groups,
                                resnet_pre_norm, output_scale_factor)
        attention = _attention_kwargs(num_attention_heads, cross_attention_dim, use_linear_projection,
                                      only_cross_attention, upcast_attention, num_layers)
        self._build_down(in_channels, out_channels, num_layers, temb_channels, resnet, attention, add_downsample,
                         downsample_padding)

    def forward(
        self,
        hidden_states: torch.Tensor,
        temb: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,  # accepted and unused, as in the reference
        num_frames: int = 1,
        cross_attention_kwargs: dict[str, Any] | None = None,
    ):
        return self._run_down(hidden_states, temb, num_frames, encoder_hidden_states, cross_attention_kwargs)


# ---------------------------------------------------------------------------------------------- mid


class UNetMidBlock3DCrossAttn(_Block3D):
    """resnet -> temp_conv, then ``num_layers`` x (attention -> temporal attention -> resnet -> temp_conv)."""

    def __init__(
        self,
        in_channels: int,
        temb_channels: int,
        dropout: float = 0.0,
        num_layers: int = 1,
        resnet_eps: float = 1e-6,
        resnet_time_scale_shift: str = "default",
        resnet_act_fn: str = "swish",
        resnet_groups: int = 32,
        resnet_pre_norm: bool = True,
        num_attention_heads: int = 1,
        output_scale_factor: float = 1.0,
        cross_attention_dim: int = 1280,
        dual_cross_attention: bool = False,
        use_linear_projection: bool = True,
        upcast_attention: bool = False,
    ):
        super().__init__()
        resnet_groups = resnet_groups if resnet_groups is not None else min(in_channels // 4, 32)
        resnet = resnet_options(dropout, resnet_eps, resnet_time_scale_shift, resnet_act_fn, resnet_groups,
                                resnet_pre_norm, output_scale_factor)
        attention = _attention_kwargs(num_attention_heads, cross_attention_dim, use_linear_projection, False,
                                      upcast_attention, num_layers)
        self._build_layers([(in_channels, in_channels)] * (num_layers + 1), temb_channels, resnet, attention)

    def forward(
        self,
        hidden_states: torch.Tensor,
        temb: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,  # accepted and unused, as in the reference
        num_frames: int = 1,
        cross_attention_kwargs: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        return mid_pass(
            hidden_states, len(self.attentions),
            lambda i, h: self._resnet_step(i, h, temb, num_frames),
            lambda i, h: self._attention_step(i, h, encoder_hidden_states, num_frames, cross_attention_kwargs),
        )  # fmt: skip


# ---------------------------------------------------------------------------------------------- up


class _UpBlock3DBase(_Block3D):
    def _build_up(self, in_channels, prev_channels, out_channels, num_layers, temb_channels, resnet, attention,
                  add_up, resolution_idx):
        self._build_layers(up_channels(in_channels, prev_channels, out_channels, num_layers), temb_channels, resnet, attention)
        self.upsamplers = upsamplers(out_channels, add_up)
        self.gradient_checkpointing = False
        self.resolution_idx = resolution_idx
        self.s1 = self.s2 = self.b1 = self.b2 = None  # FreeU factors, set by the UNet's enable_freeu

    def _run_up(self, hidden_states, res_hidden_states_tuple, temb, upsample_size, num_frames,
                encoder_hidden_states=None, cross_attention_kwargs=None):
        def resnet(i, h):  # h: (b f) (c+skip) h w
            return self._resnet_step(i, h, temb, num_frames)

        def rest(i, h):
            if not self.has_cross_attention:
                return h
            return self._attention_step(i, h, encoder_hidden_states, num_frames, cross_attention_kwargs)

        return up_pass(self, hidden_states, res_hidden_states_tuple, (resnet, rest), upsample_size)


class UpBlock3D(_UpBlock3DBase):
    def __init__(
        self,
        in_channels: int,
        prev_output_channel: int,
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
        add_upsample: bool = True,
        resolution_idx: int | None = None,
    ):
        super().__init__()
        resnet = resnet_options(dropout, resnet_eps, resnet_time_scale_shift, resnet_act_fn, resnet_groups,
                                resnet_pre_norm, output_scale_factor)
        self._build_up(in_channels, prev_output_channel, out_channels, num_layers, temb_channels, resnet, None,
                       add_upsample, resolution_idx)

    def forward(
        self,
        hidden_states: torch.Tensor,
        res_hidden_states_tuple: tuple[torch.Tensor, ...],
        temb: torch.Tensor | None = None,
        upsample_size: int | None = None,
        num_frames: int = 1,
    ) -> torch.Tensor:
        return self._run_up(hidden_states, res_hidden_states_tuple, temb, upsample_size, num_frames)


class CrossAttnUpBlock3D(_UpBlock3DBase):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        prev_output_channel: int,
        temb_channels: int,
        dropout: float = 0.0,
        num_layers: int = 1,
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
        resolution_idx: int | None = None,
    ):
        super().__init__()
        resnet = resnet_options(dropout, resnet_eps, resnet_time_scale_shift, resnet_act_fn, resnet_groups,
                                resnet_pre_norm, output_scale_factor)
        attention = _attention_kwargs(num_attention_heads, cross_attention_dim, use_linear_projection,
                                      only_cross_attention, upcast_attention, num_layers)
        self._build_up(in_channels, prev_output_channel, out_channels, num_layers, temb_channels, resnet, attention,
                       add_upsample, resolution_idx)

    def forward(
        self,
        hidden_states: torch.Tensor,
        res_hidden_states_tuple: tuple[torch.Tensor, ...],
        temb: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        upsample_size: int | None = None,
        attention_mask: torch.Tensor | None = None,  # accepted and unused, as in the reference
        num_frames: int = 1,
        cross_attention_kwargs: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        return self._run_up(hidden_states, res_hidden_states_tuple, temb, upsample_size, num_frames,
                            encoder_hidden_states, cross_attention_kwargs)


# ---------------------------------------------------------------------------------------------- factories

_DOWN_BLOCKS = {"DownBlock3D": DownBlock3D, "CrossAttnDownBlock3D": CrossAttnDownBlock3D}
_UP_BLOCKS = {"UpBlock3D": UpBlock3D, "CrossAttnUpBlock3D": CrossAttnUpBlock3D}
_ATTENTION_ARGS = ("cross_attention_dim", "num_attention_heads", "dual_cross_attention", "use_linear_projection",
                   "only_cross_attention", "upcast_attention")


def _make_block(kind: str, block_type: str, known: dict, kwargs: dict[str, Any]) -> nn.Module:
    if block_type not in known:
        raise ValueError(f"unknown {kind} block type {block_type!r}; the 3-D UNet supports {sorted(known)}")
    if not block_type.startswith("CrossAttn"):
        return known[block_type](**{k: v for k, v in kwargs.items() if k not in _ATTENTION_ARGS})
    if kwargs["cross_attention_dim"] is None:
        raise ValueError(f"cross_attention_dim must be specified for {block_type}")
    return known[block_type](**kwargs)


def get_down_block(
    down_block_type: str,
    num_layers: int,
    in_channels: int,
    out_channels: int,
    temb_channels: int,
    add_downsample: bool,
    resnet_eps: float,
    resnet_act_fn: str,
    num_attention_heads: int,
    resnet_groups: int | None = None,
    cross_attention_dim: int | None = None,
    downsample_padding: int | None = None,
    dual_cross_attention: bool = False,
    use_linear_projection: bool = True,
    only_cross_attention: bool = False,
    upcast_attention: bool = False,
    resnet_time_scale_shift: str = "default",
    dropout: float = 0.0,
    **_spatio_temporal_options: Any,
) -> DownBlock3D | CrossAttnDownBlock3D:
    """A down block by name, with the reference factory's defaults (note ``use_linear_projection=True``)."""
    kwargs = {k: v for k, v in locals().items() if k not in ("down_block_type", "_spatio_temporal_options")}
    return _make_block("down", down_block_type, _DOWN_BLOCKS, kwargs)


def get_up_block(
    up_block_type: str,
    num_layers: int,
    in_channels: int,
    out_channels: int,
    prev_output_channel: int,
    temb_channels: int,
    add_upsample: bool,
    resnet_eps: float,
    resnet_act_fn: str,
    num_attention_heads: int,
    resolution_idx: int | None = None,
    resnet_groups: int | None = None,
    cross_attention_dim: int | None = None,
    dual_cross_attention: bool = False,
    use_linear_projection: bool = True,
    only_cross_attention: bool = False,
    upcast_attention: bool = False,
    resnet_time_scale_shift: str = "default",
    dropout: float = 0.0,
    **_spatio_temporal_options: Any,
) -> UpBlock3D | CrossAttnUpBlock3D:
    """An up block by name, with the reference factory's defaults (note ``use_linear_projection=True``)."""
    kwargs = {k: v for k, v in locals().items() if k not in ("up_block_type", "_spatio_temporal_options")}
    return _make_block("up", up_block_type, _UP_BLOCKS, kwargs)
