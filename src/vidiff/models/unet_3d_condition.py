"""UNet3DConditionModel: the ModelScope text-to-video UNet (also Zeroscope), diffusers-checkpoint compatible.

Frames are folded into the batch, ``b c f h w -> (b f) c h w``, for the 2-D layers; temporal convolutions and
temporal transformers unfold them again. Keys: ``conv_in``, ``time_proj``/``time_embedding``, ``transformer_in``,
``down_blocks``, ``mid_block``, ``up_blocks``, ``conv_norm_out``, ``conv_out`` — as in the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..configuration import Config, ConfigError
from ..layers.attention import AttentionProcessorMixin
from ..layers.embeddings import add_unet_stem, timesteps_for_batch
from ..layers.resnets import get_activation
from ..layers.temporal import fold_frames, unfold_frames
from ..layers.transformers import ForwardChunkingMixin, TransformerTemporalModel
from ..layers.unet_3d_blocks import UNetMidBlock3DCrossAttn, get_down_block, get_up_block
from ..layers.unet_passes import FreeUMixin
from ..runtime.guidance import once_for_equal_halves
from ..runtime.layout import GroupNorm
from .modeling import ModelMixin
from .outputs import BaseOutput
from .unet_2d_condition import UNetPassesMixin, check_video_sample

_DOWN_TYPES = ("CrossAttnDownBlock3D", "DownBlock3D")
_UP_TYPES = ("CrossAttnUpBlock3D", "UpBlock3D")


@dataclass
class UNet3DConditionOutput(BaseOutput):
    """``sample``: (batch, channels, frames, height, width)."""

    sample: torch.Tensor


@dataclass
class UNet3DConditionConfig(Config):
    sample_size: int | tuple[int, int] | None = None
    in_channels: int = 4
    out_channels: int = 4
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D")
    up_block_types: tuple[str, ...] = ("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D")
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1
    act_fn: str = "silu"
    norm_num_groups: int | None = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int = 1024
    # Historically misnamed: this is the number of channels per head of the spatial/temporal transformers.
    attention_head_dim: int | tuple[int, ...] = 64
    num_attention_heads: int | tuple[int, ...] | None = None
    time_cond_proj_dim: int | None = None

    def validate(self) -> None:
        if self.num_attention_heads is not None:
            raise NotImplementedError(
                "UNet3DConditionModel does not accept num_attention_heads (the reference refuses it too, see "
                "diffusers issue #2011): set attention_head_dim instead and leave num_attention_heads=None."
            )
        n = len(self.down_block_types)
        if len(self.up_block_types) != n or len(self.block_out_channels) != n:
            raise ConfigError(
                f"down_block_types ({n}), up_block_types ({len(self.up_block_types)}) and block_out_channels "
                f"({len(self.block_out_channels)}) must have the same length."
            )
        for name, types, known in (("down", self.down_block_types, _DOWN_TYPES), ("up", self.up_block_types, _UP_TYPES)):
            unknown = [t for t in types if t not in known]
            if unknown:
                raise ConfigError(f"{name}_block_types has unknown block types {unknown}; expected any of {list(known)}")
        if not isinstance(self.attention_head_dim, int):
            raise ConfigError(
                f"attention_head_dim must be one int for UNet3DConditionModel (its transformer_in uses it), got "
                f"{self.attention_head_dim!r}"
            )
        self._validate_channels()

    def _validate_channels(self) -> None:
        if self.norm_num_groups is None:
            raise ConfigError("norm_num_groups=None is not supported by UNet3DConditionModel; set it (e.g. 32).")
        for c in self.block_out_channels:
            if c % self.norm_num_groups or c % self.attention_head_dim:
                raise ConfigError(
                    f"every block_out_channels entry must be divisible by norm_num_groups={self.norm_num_groups} and "
                    f"attention_head_dim={self.attention_head_dim}; {c} is not (block_out_channels={list(self.block_out_channels)})."
                )


def build_3d_blocks(unet: nn.Module, cfg: Any, time_embed_dim: int, *, eps: float, act_fn: str, downsample_padding: int,
                    mid_block_scale_factor: float) -> None:
    """``down_blocks``, ``up_blocks`` then ``mid_block`` of a ModelScope-style UNet (the reference's registration order,
    which fixes state_dict and attn_processors order), from ``block_out_channels``, ``layers_per_block``,
    ``norm_num_groups``, ``cross_attention_dim``, ``attention_head_dim`` and the block types of ``cfg``."""
    channels = cfg.block_out_channels
    common = dict(
        temb_channels=time_embed_dim, resnet_eps=eps, resnet_act_fn=act_fn, resnet_groups=cfg.norm_num_groups,
        cross_attention_dim=cfg.cross_attention_dim, num_attention_heads=cfg.attention_head_dim, dual_cross_attention=False,
    )  # fmt: skip
    unet.down_blocks = nn.ModuleList(
        get_down_block(
            block_type, num_layers=cfg.layers_per_block, in_channels=channels[max(i - 1, 0)], out_channels=channels[i],
            add_downsample=i < len(channels) - 1, downsample_padding=downsample_padding, **common,
        )  # fmt: skip
        for i, block_type in enumerate(cfg.down_block_types)
    )
    unet.num_upsamplers = len(channels) - 1
    rev = list(reversed(channels))
    unet.up_blocks = nn.ModuleList(
        get_up_block(
            block_type, num_layers=cfg.layers_per_block + 1, in_channels=rev[min(i + 1, len(rev) - 1)], out_channels=rev[i],
            prev_output_channel=rev[max(i - 1, 0)], add_upsample=i < len(rev) - 1, resolution_idx=i, **common,
        )  # fmt: skip
        for i, block_type in enumerate(cfg.up_block_types)
    )
    unet.mid_block = UNetMidBlock3DCrossAttn(
        in_channels=channels[-1], temb_channels=time_embed_dim, resnet_eps=eps, resnet_act_fn=act_fn,
        output_scale_factor=mid_block_scale_factor, cross_attention_dim=cfg.cross_attention_dim,
        num_attention_heads=cfg.attention_head_dim, resnet_groups=cfg.norm_num_groups, dual_cross_attention=False,
    )  # fmt: skip


class UNet3DConditionModel(ModelMixin, AttentionProcessorMixin, ForwardChunkingMixin, FreeUMixin, UNetPassesMixin):
    """Conditional 3-D UNet: noisy video latents (b, c, f, h, w) + timestep + text states -> (b, c_out, f, h, w)."""

    config_class = UNet3DConditionConfig
    _supports_gradient_checkpointing = False

    def __init__(self, config: UNet3DConditionConfig | None = None, **kwargs: Any):
        super().__init__()
        cfg = self.register_config(config, kwargs)
        channels = cfg.block_out_channels
        time_embed_dim = channels[0] * 4
        self.sample_size = cfg.sample_size

        add_unet_stem(self, cfg.in_channels, channels[0], time_embed_dim, act_fn=cfg.act_fn, cond_proj_dim=cfg.time_cond_proj_dim)
        self.transformer_in = TransformerTemporalModel(
            num_attention_heads=8, attention_head_dim=cfg.attention_head_dim, in_channels=channels[0], num_layers=1,
            norm_num_groups=cfg.norm_num_groups,
        )  # fmt: skip

        build_3d_blocks(self, cfg, time_embed_dim, eps=cfg.norm_eps, act_fn=cfg.act_fn, downsample_padding=cfg.downsample_padding,
                        mid_block_scale_factor=cfg.mid_block_scale_factor)
        self.conv_norm_out = GroupNorm(num_channels=channels[0], num_groups=cfg.norm_num_groups, eps=cfg.norm_eps)
        self.conv_act = get_activation("silu")
        self.conv_out = nn.Conv2d(channels[0], cfg.out_channels, kernel_size=3, padding=1)

    # ------------------------------------------------------------------------------------------ forward

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        down_block_additional_residuals: tuple[torch.Tensor, ...] | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> UNet3DConditionOutput | tuple[torch.Tensor]:
        """Denoise ``sample`` (b, c, f, h, w) at ``timestep`` given ``encoder_hidden_states`` (b, seq, dim).

        ``class_labels`` and ``attention_mask`` are accepted for signature compatibility and, as in the
        reference, have no effect. ``down_block_additional_residuals`` / ``mid_block_additional_residual`` are
        added to the skip connections / mid-block output (ControlNet-style), on ``(b f) c h w`` tensors.
        """
        self._check_inputs(sample, encoder_hidden_states)
        batch, _, num_frames = sample.shape[:3]
        # sizes that are not a multiple of the total upsampling factor make every upsampler match its skip's size
        forward_upsample_size = self._needs_upsample_size(sample)

        emb = self._embed_time(timestep, timestep_cond, batch, sample.device)  # b d
        emb = emb.repeat_interleave(num_frames, dim=0, output_size=batch * num_frames)  # (b f) d
        context = encoder_hidden_states  # b n d: one per video, shared by its frames (see attention.context_repeats)

        def prefix(sample: torch.Tensor) -> torch.Tensor:  # before the text: the same for [uncond, cond] halves
            x = self.conv_in(fold_frames(sample))  # (b f) c h w
            return self.transformer_in(x, num_frames=num_frames, cross_attention_kwargs=cross_attention_kwargs, return_dict=False)[0]

        x = once_for_equal_halves(prefix, sample)
        cond = dict(encoder_hidden_states=context, cross_attention_kwargs=cross_attention_kwargs)
        x, skips = self._down(x, emb, cond, num_frames)
        skips = self._add_skip_residuals(skips, down_block_additional_residuals)
        x = self._mid(x, emb, cond, num_frames)
        if mid_block_additional_residual is not None:
            x = x + mid_block_additional_residual
        x = self._up(x, skips, emb, cond, num_frames, forward_upsample_size)

        x = self.conv_out(self.conv_act(self.conv_norm_out(x)))
        out = unfold_frames(x, num_frames)  # b c f h w
        return UNet3DConditionOutput(sample=out) if return_dict else (out,)

    def _embed_time(self, timestep, timestep_cond, batch: int, device: torch.device) -> torch.Tensor:
        t_emb = self.time_proj(timesteps_for_batch(timestep, batch, device))  # b c, float32
        t_emb = t_emb.to(dtype=self.time_embedding.linear_1.weight.dtype)
        return self.time_embedding(t_emb, timestep_cond)

    def _check_inputs(self, sample: torch.Tensor, encoder_hidden_states: torch.Tensor) -> None:
        cfg = self.config
        check_video_sample(sample, cfg.in_channels)
        context = encoder_hidden_states
        if context.ndim != 3 or context.shape[0] != sample.shape[0] or context.shape[-1] != cfg.cross_attention_dim:
            raise ValueError(
                f"encoder_hidden_states must be (batch={sample.shape[0]}, sequence, {cfg.cross_attention_dim}), got shape "
                f"{tuple(encoder_hidden_states.shape)}; pass one text embedding per video in the batch."
            )
