"""UNetSpatioTemporalConditionModel: the Stable Video Diffusion UNet, diffusers-checkpoint compatible.

Usage::

    unet = UNetSpatioTemporalConditionModel.from_config(config)
    noise_pred = unet(latents, t, image_embeddings, added_time_ids).sample
    # latents (b, f, 8, h, w): noisy latents + the conditioning image's latents; image_embeddings (b, 1, 1024);
    # added_time_ids (b, 3): fps, motion bucket id, noise augmentation strength -> (b, f, 4, h, w)

Frames are folded into the batch, ``(b f) c h w``; every resnet and transformer has a temporal twin mixed in by a
learned factor (see ``layers/spatio_temporal.py``). Keys: ``conv_in``, ``time_proj``/``time_embedding``,
``add_time_proj``/``add_embedding``, ``down_blocks``, ``up_blocks``, ``mid_block``, ``conv_norm_out``, ``conv_out``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..configuration import Config, ConfigError
from ..layers.attention import AttentionProcessorMixin
from ..layers.embeddings import add_text_time_embedding, add_unet_stem, timesteps_for_batch
from ..layers.spatio_temporal import DOWN_BLOCK_TYPES, UP_BLOCK_TYPES, UNetMidBlockSpatioTemporal, get_down_block, get_up_block
from ..layers.transformers import ForwardChunkingMixin
from ..runtime.layout import GroupNorm
from .modeling import ModelMixin
from .outputs import BaseOutput


@dataclass
class UNetSpatioTemporalConditionOutput(BaseOutput):
    """``sample``: (batch, frames, channels, height, width)."""

    sample: torch.Tensor = None


@dataclass
class UNetSpatioTemporalConditionConfig(Config):
    sample_size: int | tuple[int, int] | None = None
    in_channels: int = 8
    out_channels: int = 4
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal",
                                         "CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal")
    up_block_types: tuple[str, ...] = ("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal",
                                       "CrossAttnUpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal")
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    addition_time_embed_dim: int = 256
    projection_class_embeddings_input_dim: int = 768
    layers_per_block: int | tuple[int, ...] = 2
    cross_attention_dim: int | tuple[int, ...] = 1024
    transformer_layers_per_block: int | tuple[int | tuple[int, ...], ...] = 1
    num_attention_heads: int | tuple[int, ...] = (5, 10, 20, 20)
    num_frames: int = 25

    def per_block(self, name: str) -> list[Any]:
        """An int-or-tuple field as one value per down block."""
        value = getattr(self, name)
        return [value] * len(self.down_block_types) if isinstance(value, int) else list(value)

    def validate(self) -> None:
        n = len(self.down_block_types)
        if len(self.up_block_types) != n or len(self.block_out_channels) != n:
            raise ConfigError(
                f"down_block_types ({n}), up_block_types ({len(self.up_block_types)}) and block_out_channels "
                f"({len(self.block_out_channels)}) must have the same length")
        for name in ("num_attention_heads", "cross_attention_dim", "layers_per_block", "transformer_layers_per_block"):
            if len(self.per_block(name)) != n:
                raise ConfigError(f"{name} must be one int or one value per down block ({n}), got {getattr(self, name)!r}")
        for name, types, known in (("down", self.down_block_types, DOWN_BLOCK_TYPES), ("up", self.up_block_types, UP_BLOCK_TYPES)):
            unknown = [t for t in types if t not in known]
            if unknown:
                raise ConfigError(f"{name}_block_types has unknown block types {unknown}; expected any of {list(known)}")
        bad = [c for c in self.block_out_channels if c % 32]
        if bad:
            raise ConfigError(f"block_out_channels {bad} are not divisible by 32 (the group norms' group count); "
                              f"got block_out_channels={list(self.block_out_channels)}")
        self._validate_heads()

    def _validate_heads(self) -> None:
        """Attention stages split their width into heads whose total must give back the width."""
        heads, channels = self.per_block("num_attention_heads"), self.block_out_channels
        attended = [i for i, t in enumerate(self.down_block_types) if t.startswith("CrossAttn")]
        attended += [len(channels) - 1 - i for i, t in enumerate(self.up_block_types) if t.startswith("CrossAttn")]
        for i in sorted(set(attended) | {len(channels) - 1}):  # the mid block always attends
            if channels[i] % heads[i]:
                raise ConfigError(f"block_out_channels[{i}]={channels[i]} is not divisible by num_attention_heads[{i}]={heads[i]}; "
                                  "pick head counts that divide the block widths")


class UNetSpatioTemporalConditionModel(ModelMixin, AttentionProcessorMixin, ForwardChunkingMixin):
    """Conditional spatio-temporal UNet: noisy latents (b, f, c, h, w) + timestep + image embeddings + added time ids
    -> (b, f, out_channels, h, w)."""

    config_class = UNetSpatioTemporalConditionConfig
    _supports_gradient_checkpointing = True

    def __init__(self, config: UNetSpatioTemporalConditionConfig | None = None, **kwargs: Any):
        super().__init__()
        cfg = self.register_config(config, kwargs)
        channels = cfg.block_out_channels
        time_embed_dim = channels[0] * 4
        self.sample_size = cfg.sample_size

        add_unet_stem(self, cfg.in_channels, channels[0], time_embed_dim)
        add_text_time_embedding(self, cfg.addition_time_embed_dim, cfg.projection_class_embeddings_input_dim, time_embed_dim)

        heads, cross, layers, tlayers = (cfg.per_block(k) for k in (
            "num_attention_heads", "cross_attention_dim", "layers_per_block", "transformer_layers_per_block"))
        last = len(channels) - 1
        self.down_blocks = nn.ModuleList(
            get_down_block(block_type, num_layers=layers[i], in_channels=channels[max(i - 1, 0)], out_channels=channels[i],
                           temb_channels=time_embed_dim, add_downsample=i < last, num_attention_heads=heads[i],
                           cross_attention_dim=cross[i], transformer_layers_per_block=tlayers[i])
            for i, block_type in enumerate(cfg.down_block_types))
        # up blocks run from the deepest stage: every per-block list is read reversed (r_*)
        rev, r_heads, r_cross, r_layers, r_tlayers = (list(v)[::-1] for v in (channels, heads, cross, layers, tlayers))
        self.up_blocks = nn.ModuleList(
            get_up_block(block_type, num_layers=r_layers[i] + 1, in_channels=rev[min(i + 1, last)], out_channels=rev[i],
                         prev_output_channel=rev[max(i - 1, 0)], temb_channels=time_embed_dim, add_upsample=i < last,
                         resolution_idx=i, num_attention_heads=r_heads[i], cross_attention_dim=r_cross[i],
                         transformer_layers_per_block=r_tlayers[i])
            for i, block_type in enumerate(cfg.up_block_types))
        self.num_upsamplers = last
        # registered after up_blocks: the reference's state-dict order is down, up, mid
        self.mid_block = UNetMidBlockSpatioTemporal(channels[-1], temb_channels=time_embed_dim, transformer_layers_per_block=tlayers[-1],
                                                    cross_attention_dim=cross[-1], num_attention_heads=heads[-1])

        self.conv_norm_out = GroupNorm(num_channels=channels[0], num_groups=32, eps=1e-5)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(channels[0], cfg.out_channels, kernel_size=3, padding=1)

    # ------------------------------------------------------------------------------------------ forward

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float | int, encoder_hidden_states: torch.Tensor,
                added_time_ids: torch.Tensor, return_dict: bool = True) -> UNetSpatioTemporalConditionOutput | tuple[torch.Tensor]:
        """Denoise ``sample`` (b, f, c, h, w) at ``timestep`` given ``encoder_hidden_states`` (b, n, d) and
        ``added_time_ids`` (b, k), each id embedded with ``addition_time_embed_dim`` sinusoidal channels."""
        self._check_inputs(sample, encoder_hidden_states, added_time_ids)
        batch, num_frames = sample.shape[:2]
        # sizes that are not a multiple of the total upsampling factor make every upsampler match its skip's size
        forward_upsample_size = any(s % 2**self.num_upsamplers != 0 for s in sample.shape[-2:])

        emb = self._embed(timestep, added_time_ids, sample)  # b d
        emb = emb.repeat_interleave(num_frames, dim=0, output_size=batch * num_frames)  # (b f) d
        context = encoder_hidden_states  # b n d: one per video, shared by its frames (see attention.context_repeats)

        x = self.conv_in(sample.flatten(0, 1))  # (b f) c h w
        indicator = torch.zeros(batch, num_frames, dtype=x.dtype, device=x.device)  # b f; 0: a video frame, not an image
        skips: tuple[torch.Tensor, ...] = (x,)
        for block in self.down_blocks:
            if block.has_cross_attention:
                x, res = block(hidden_states=x, temb=emb, encoder_hidden_states=context, image_only_indicator=indicator)
            else:
                x, res = block(hidden_states=x, temb=emb, image_only_indicator=indicator)
            skips += res
        x = self.mid_block(hidden_states=x, temb=emb, encoder_hidden_states=context, image_only_indicator=indicator)
        x = self._up(x, skips, emb, context, indicator, forward_upsample_size)

        x = self.conv_out(self.conv_act(self.conv_norm_out(x)))
        out = x.reshape(batch, num_frames, *x.shape[1:])  # b f c h w
        return UNetSpatioTemporalConditionOutput(sample=out) if return_dict else (out,)

    def _embed(self, timestep, added_time_ids: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """Timestep embedding plus the embedding of the added time ids: (b, time_embed_dim)."""
        batch = sample.shape[0]
        t_emb = self.time_proj(timesteps_for_batch(timestep, batch, sample.device)).to(dtype=sample.dtype)  # b c, as sample
        emb = self.time_embedding(t_emb)
        time_embeds = self.add_time_proj(added_time_ids.flatten()).reshape(batch, -1).to(emb.dtype)  # b (k d)
        return emb + self.add_embedding(time_embeds)

    def _up(self, x, skips, emb, context, indicator, forward_upsample_size: bool) -> torch.Tensor:
        for i, block in enumerate(self.up_blocks):
            n = len(block.resnets)
            res, skips = skips[-n:], skips[:-n]
            upsample_size = skips[-1].shape[2:] if forward_upsample_size and i < len(self.up_blocks) - 1 else None
            if block.has_cross_attention:
                x = block(hidden_states=x, temb=emb, res_hidden_states_tuple=res, encoder_hidden_states=context,
                          upsample_size=upsample_size, image_only_indicator=indicator)
            else:
                x = block(hidden_states=x, temb=emb, res_hidden_states_tuple=res, upsample_size=upsample_size,
                          image_only_indicator=indicator)
        return x

    def _check_inputs(self, sample: torch.Tensor, encoder_hidden_states: torch.Tensor, added_time_ids: torch.Tensor) -> None:
        cfg = self.config
        if sample.ndim != 5 or sample.shape[2] != cfg.in_channels:
            hint = ("; this UNet takes frames before channels (b, f, c, h, w), not (b, c, f, h, w)"
                    if sample.ndim == 5 and sample.shape[1] == cfg.in_channels else "")
            raise ValueError(f"sample must be (batch, frames, {cfg.in_channels}, height, width), got shape {tuple(sample.shape)}{hint}")
        dim = cfg.cross_attention_dim if isinstance(cfg.cross_attention_dim, int) else encoder_hidden_states.shape[-1]
        if encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[0] != sample.shape[0] or encoder_hidden_states.shape[-1] != dim:
            raise ValueError(f"encoder_hidden_states must be (batch={sample.shape[0]}, sequence, {dim}), got shape "
                             f"{tuple(encoder_hidden_states.shape)}; pass one image embedding per video in the batch")
        per_video = self.add_embedding.linear_1.in_features // cfg.addition_time_embed_dim
        if added_time_ids.numel() != sample.shape[0] * per_video:
            raise ValueError(
                f"added_time_ids must hold {per_video} ids per video (projection_class_embeddings_input_dim="
                f"{self.add_embedding.linear_1.in_features} / addition_time_embed_dim={cfg.addition_time_embed_dim}), i.e. shape "
                f"(batch={sample.shape[0]}, {per_video}); got shape {tuple(added_time_ids.shape)}")
