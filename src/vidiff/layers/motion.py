"""AnimateDiff motion modules and the motion UNet blocks (SD blocks with a temporal transformer after every layer).

Video latents run through the 2-D layers with frames folded into the batch, ``(b f) c h w``; each motion module
attends along the frame axis at every pixel, with sinusoidal frame positions. Keys match the reference:
``motion_modules.{i}.norm/proj_in/transformer_blocks.{j}.(attn1|attn2|ff|pos_embed)/proj_out``.

Usage::

    block = CrossAttnDownBlockMotion(320, 320, temb_channels=1280, num_layers=2, num_attention_heads=8,
                                     cross_attention_dim=768, temporal_num_attention_heads=8)
    h, skips = block(h, temb, encoder_hidden_states=text, num_frames=16)    # h: (b f) c h w
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .transformers import TransformerTemporalModel
from .unet_2d_blocks import DownBlockBase, MidBlockBase, MotionFactory, UpBlockBase, attention_options, transformer_inputs
from .unet_passes import per_layer, resnet_options


class AnimateDiffTransformer3D(TransformerTemporalModel):
    """A temporal transformer (``(b f) c h w`` -> same shape) that returns the tensor itself, as the reference does."""

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        timestep: torch.LongTensor | None = None,
        class_labels: torch.LongTensor | None = None,
        num_frames: int = 1,
        cross_attention_kwargs: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        return super().forward(
            hidden_states, encoder_hidden_states=encoder_hidden_states, timestep=timestep, class_labels=class_labels,
            num_frames=num_frames, cross_attention_kwargs=cross_attention_kwargs, return_dict=False,
        )[0]  # fmt: skip


def motion_factory(
    num_layers: int,
    heads: int | tuple[int, ...],
    transformer_layers: int | tuple[int, ...],
    norm_num_groups: int,
    max_seq_length: int,
    cross_attention_dim: int | None = None,
    double_self_attention: bool = True,
    activation_fn: str = "geglu",
    attention_bias: bool = False,
) -> MotionFactory:
    """Builds the motion module after layer ``i`` (``heads[i]`` heads over its width, sinusoidal frame positions)."""
    heads = per_layer(heads, num_layers, "temporal_num_attention_heads")
    layers = per_layer(transformer_layers, num_layers, "temporal_transformer_layers_per_block")

    def make(channels: int, i: int) -> AnimateDiffTransformer3D:
        if channels % heads[i]:
            raise ValueError(f"motion module width {channels} is not divisible by its {heads[i]} attention heads")
        return AnimateDiffTransformer3D(
            num_attention_heads=heads[i], attention_head_dim=channels // heads[i], in_channels=channels,
            num_layers=layers[i], norm_num_groups=norm_num_groups, cross_attention_dim=cross_attention_dim,
            attention_bias=attention_bias, activation_fn=activation_fn, positional_embeddings="sinusoidal",
            num_positional_embeddings=max_seq_length, double_self_attention=double_self_attention,
        )  # fmt: skip

    return make


class MotionModules(nn.Module):
    """A MotionAdapter's modules for one UNet block: ``motion_modules.{0..layers_per_block-1}``."""

    def __init__(
        self,
        in_channels: int,
        layers_per_block: int = 2,
        transformer_layers_per_block: int | tuple[int, ...] = 8,
        num_attention_heads: int | tuple[int, ...] = 8,
        attention_bias: bool = False,
        cross_attention_dim: int | None = None,
        activation_fn: str = "geglu",
        norm_num_groups: int = 32,
        max_seq_length: int = 32,
    ):
        super().__init__()
        if not isinstance(num_attention_heads, int):
            raise ValueError(f"MotionModules takes one num_attention_heads per block (an int), got {num_attention_heads!r}")
        make = motion_factory(layers_per_block, num_attention_heads, transformer_layers_per_block, norm_num_groups,
                              max_seq_length, cross_attention_dim, True, activation_fn, attention_bias)
        self.motion_modules = nn.ModuleList(make(in_channels, i) for i in range(layers_per_block))


# ---------------------------------------------------------------------------------------------- blocks


class DownBlockMotion(DownBlockBase):
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
        temporal_num_attention_heads: int | tuple[int, ...] = 1,
        temporal_cross_attention_dim: int | None = None,
        temporal_max_seq_length: int = 32,
        temporal_transformer_layers_per_block: int | tuple[int, ...] = 1,
        temporal_double_self_attention: bool = True,
    ):
        super().__init__()
        resnet = resnet_options(dropout, resnet_eps, resnet_time_scale_shift, resnet_act_fn, resnet_groups, resnet_pre_norm,
                                output_scale_factor)
        motion = motion_factory(num_layers, temporal_num_attention_heads, temporal_transformer_layers_per_block,
                                resnet_groups, temporal_max_seq_length, temporal_cross_attention_dim, temporal_double_self_attention)
        self._build_down(in_channels, out_channels, num_layers, temb_channels, resnet, add_downsample, downsample_padding, motion=motion)

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None, num_frames: int = 1, *args, **kwargs):
        return self._run_down(hidden_states, temb, num_frames=num_frames)


class CrossAttnDownBlockMotion(DownBlockBase):
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
        temporal_cross_attention_dim: int | None = None,
        temporal_num_attention_heads: int = 8,
        temporal_max_seq_length: int = 32,
        temporal_transformer_layers_per_block: int | tuple[int, ...] = 1,
        temporal_double_self_attention: bool = True,
    ):
        super().__init__()
        resnet = resnet_options(dropout, resnet_eps, resnet_time_scale_shift, resnet_act_fn, resnet_groups, resnet_pre_norm,
                                output_scale_factor)
        attention = attention_options(num_attention_heads, cross_attention_dim, use_linear_projection, upcast_attention,
                                      attention_type, dual_cross_attention, only_cross_attention)
        motion = motion_factory(num_layers, temporal_num_attention_heads, temporal_transformer_layers_per_block,
                                resnet_groups, temporal_max_seq_length, temporal_cross_attention_dim, temporal_double_self_attention)
        self._build_down(in_channels, out_channels, num_layers, temb_channels, resnet, add_downsample, downsample_padding,
                         attention, transformer_layers_per_block, motion)

    def forward(
        self,
        hidden_states: torch.Tensor,
        temb: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        num_frames: int = 1,
        encoder_attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        additional_residuals: torch.Tensor | None = None,
    ):
        cond = transformer_inputs(encoder_hidden_states, attention_mask, cross_attention_kwargs, encoder_attention_mask)
        return self._run_down(hidden_states, temb, cond, num_frames, additional_residuals)


class UNetMidBlockCrossAttnMotion(MidBlockBase):
    """resnet, then ``num_layers`` x (attention -> motion module -> resnet)."""

    def __init__(
        self,
        in_channels: int,
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
        output_scale_factor: float = 1.0,
        cross_attention_dim: int = 1280,
        dual_cross_attention: bool = False,
        use_linear_projection: bool = False,
        upcast_attention: bool = False,
        attention_type: str = "default",
        temporal_num_attention_heads: int = 1,
        temporal_cross_attention_dim: int | None = None,
        temporal_max_seq_length: int = 32,
        temporal_transformer_layers_per_block: int | tuple[int, ...] = 1,
    ):
        super().__init__()
        resnet_groups = resnet_groups if resnet_groups is not None else min(in_channels // 4, 32)
        resnet = resnet_options(dropout, resnet_eps, resnet_time_scale_shift, resnet_act_fn, resnet_groups, resnet_pre_norm,
                                output_scale_factor)
        attention = attention_options(num_attention_heads, cross_attention_dim, use_linear_projection, upcast_attention,
                                      attention_type, dual_cross_attention)
        motion = motion_factory(num_layers, temporal_num_attention_heads, temporal_transformer_layers_per_block,
                                resnet_groups, temporal_max_seq_length, temporal_cross_attention_dim)
        io = [(in_channels, in_channels)] * (num_layers + 1)
        self._build_layers(io, temb_channels, resnet, attention, transformer_layers_per_block, motion)

    def forward(
        self,
        hidden_states: torch.Tensor,
        temb: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        num_frames: int = 1,
    ) -> torch.Tensor:
        cond = transformer_inputs(encoder_hidden_states, attention_mask, cross_attention_kwargs, encoder_attention_mask)
        return self._run_mid(hidden_states, temb, cond, num_frames)


class CrossAttnUpBlockMotion(UpBlockBase):
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
        temporal_cross_attention_dim: int | None = None,
        temporal_num_attention_heads: int = 8,
        temporal_max_seq_length: int = 32,
        temporal_transformer_layers_per_block: int | tuple[int, ...] = 1,
    ):
        super().__init__()
        resnet = resnet_options(dropout, resnet_eps, resnet_time_scale_shift, resnet_act_fn, resnet_groups, resnet_pre_norm,
                                output_scale_factor)
        attention = attention_options(num_attention_heads, cross_attention_dim, use_linear_projection, upcast_attention,
                                      attention_type, dual_cross_attention, only_cross_attention)
        motion = motion_factory(num_layers, temporal_num_attention_heads, temporal_transformer_layers_per_block,
                                resnet_groups, temporal_max_seq_length, temporal_cross_attention_dim)
        self._build_up(in_channels, prev_output_channel, out_channels, num_layers, temb_channels, resnet, add_upsample,
                       resolution_idx, attention, transformer_layers_per_block, motion)

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
        num_frames: int = 1,
    ) -> torch.Tensor:
        cond = transformer_inputs(encoder_hidden_states, attention_mask, cross_attention_kwargs, encoder_attention_mask)
        return self._run_up(hidden_states, res_hidden_states_tuple, temb, upsample_size, cond, num_frames)


class UpBlockMotion(UpBlockBase):
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
        temporal_cross_attention_dim: int | None = None,
        temporal_num_attention_heads: int = 8,
        temporal_max_seq_length: int = 32,
        temporal_transformer_layers_per_block: int | tuple[int, ...] = 1,
    ):
        super().__init__()
        resnet = resnet_options(dropout, resnet_eps, resnet_time_scale_shift, resnet_act_fn, resnet_groups, resnet_pre_norm,
                                output_scale_factor)
        motion = motion_factory(num_layers, temporal_num_attention_heads, temporal_transformer_layers_per_block,
                                resnet_groups, temporal_max_seq_length, temporal_cross_attention_dim)
        self._build_up(in_channels, prev_output_channel, out_channels, num_layers, temb_channels, resnet, add_upsample,
                       resolution_idx, motion=motion)

    def forward(self, hidden_states: torch.Tensor, res_hidden_states_tuple: tuple[torch.Tensor, ...],
                temb: torch.Tensor | None = None, upsample_size=None, num_frames: int = 1, *args, **kwargs) -> torch.Tensor:
        return self._run_up(hidden_states, res_hidden_states_tuple, temb, upsample_size, num_frames=num_frames)
