"""AutoencoderKLTemporalDecoder: the Stable Video Diffusion VAE (image encoder, video decoder), diffusers-compatible.

Usage::

    vae = AutoencoderKLTemporalDecoder.from_config(config)
    latents = vae.encode(images).latent_dist.mode()                   # (b, 3, H, W) -> (b, 4, H/8, W/8)
    frames = vae.decode(latents / vae.config.scaling_factor, num_frames=f).sample   # (b f) 4 h w -> (b f) 3 H W
    vae.enable_slicing()                                              # encode one image / decode one video at a time

The encoder is the 2-D VAE encoder. The decoder's resnets are spatio-temporal (a 2-D resnet, then a temporal one,
blended by a learned factor), and a 3x1x1 ``time_conv_out`` smooths the output across frames. ``decode`` treats
each run of ``num_frames`` consecutive latents as one video. Keys: ``encoder``, ``decoder``, ``quant_conv``.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import torch
from torch import nn

from ..configuration import Config, ConfigError
from ..layers.attention import Attention, AttentionProcessorMixin
from ..layers.spatio_temporal import SpatioTemporalResBlock
from ..layers.temporal import FrameConv
from ..layers.unet_passes import upsamplers
from ..layers.vae_blocks import DiagonalGaussianDistribution, Encoder, Step, _maybe_checkpoint, block_steps
from ..runtime.layout import GroupNorm
from ..runtime.memory import release_free_memory_before
from .modeling import ModelMixin
from .outputs import AutoencoderKLOutput, DecoderOutput


def _decoder_resnet(in_channels: int, out_channels: int) -> SpatioTemporalResBlock:
    """No time embedding; alpha = sigmoid(mix_factor) weighs the temporal result (switched mix)."""
    return SpatioTemporalResBlock(in_channels=in_channels, out_channels=out_channels, temb_channels=None, eps=1e-6,
                                  temporal_eps=1e-5, merge_factor=0.0, merge_strategy="learned",
                                  switch_spatial_to_temporal_mix=True)


class MidBlockTemporalDecoder(nn.Module):
    """resnets[0], then one self-attention over pixels and resnets[1].

    Only the first attention/resnet pair runs: with ``num_layers=1`` the attention is built but unused, and with
    ``num_layers > 2`` the extra resnets are built but unused — exactly as in the reference.
    """

    def __init__(self, in_channels: int, out_channels: int, attention_head_dim: int = 512, num_layers: int = 1,
                 upcast_attention: bool = False):
        super().__init__()
        self.attentions = nn.ModuleList([
            Attention(query_dim=in_channels, heads=in_channels // attention_head_dim, dim_head=attention_head_dim, eps=1e-6,
                      upcast_attention=upcast_attention, norm_num_groups=32, bias=True, residual_connection=True)])
        self.resnets = nn.ModuleList(_decoder_resnet(in_channels if i == 0 else out_channels, out_channels) for i in range(num_layers))

    def forward(self, hidden_states: torch.Tensor, image_only_indicator: torch.Tensor) -> torch.Tensor:
        hidden_states = self.resnets[0](hidden_states, image_only_indicator=image_only_indicator)
        for resnet, attn in zip(self.resnets[1:], self.attentions):
            hidden_states = resnet(attn(hidden_states), image_only_indicator=image_only_indicator)
        return hidden_states


class UpBlockTemporalDecoder(nn.Module):
    """Spatio-temporal resnets, then an optional nearest x2 + conv."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int = 1, add_upsample: bool = True):
        super().__init__()
        self.resnets = nn.ModuleList(_decoder_resnet(in_channels if i == 0 else out_channels, out_channels) for i in range(num_layers))
        self.upsamplers = upsamplers(out_channels, add_upsample)

    def steps(self, image_only_indicator: torch.Tensor) -> list[Step]:
        """The block as one-argument steps: its resnets, then the upsampler (see ``vae_blocks.block_steps``)."""
        return [functools.partial(resnet, image_only_indicator=image_only_indicator) for resnet in self.resnets] + list(self.upsamplers or ())

    def forward(self, hidden_states: torch.Tensor, image_only_indicator: torch.Tensor) -> torch.Tensor:
        for step in self.steps(image_only_indicator):
            hidden_states = step(hidden_states)
        return hidden_states


class TemporalDecoder(nn.Module):
    """conv_in -> mid block -> up blocks -> GroupNorm/SiLU -> conv_out -> time_conv_out (3x1x1 over frames)."""

    def __init__(self, in_channels: int = 4, out_channels: int = 3, block_out_channels: tuple[int, ...] = (128, 256, 512, 512),
                 layers_per_block: int = 2):
        super().__init__()
        self.layers_per_block = layers_per_block
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[-1], kernel_size=3, stride=1, padding=1)
        self.mid_block = MidBlockTemporalDecoder(block_out_channels[-1], block_out_channels[-1],
                                                 attention_head_dim=block_out_channels[-1], num_layers=layers_per_block)
        rev = list(reversed(block_out_channels))
        self.up_blocks = nn.ModuleList(
            UpBlockTemporalDecoder(rev[max(i - 1, 0)], rev[i], num_layers=layers_per_block + 1, add_upsample=i < len(rev) - 1)
            for i in range(len(rev)))
        self.conv_norm_out = GroupNorm(num_channels=block_out_channels[0], num_groups=32, eps=1e-6)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, kernel_size=3, padding=1)
        self.time_conv_out = FrameConv(out_channels, out_channels)
        self.gradient_checkpointing = False

    def forward(self, sample: torch.Tensor, image_only_indicator: torch.Tensor, num_frames: int = 1) -> torch.Tensor:
        sample = self.conv_in(sample)  # (b f) c h w
        upscale_dtype = next(itertools.chain(self.up_blocks.parameters(), self.up_blocks.buffers())).dtype
        sample = _maybe_checkpoint(self, self.mid_block, sample, image_only_indicator).to(upscale_dtype)
        for up_block in self.up_blocks:
            release_free_memory_before(sample)
            for step in block_steps(self, up_block, image_only_indicator):
                sample = step(sample)
        sample = self.conv_out(self.conv_act(self.conv_norm_out(sample)))  # (b f) c H W

        bf, c, h, w = sample.shape
        sample = sample.reshape(bf // num_frames, num_frames, c, h, w).permute(0, 2, 1, 3, 4)  # b c f H W
        sample = self.time_conv_out(sample)
        return sample.permute(0, 2, 1, 3, 4).reshape(bf, c, h, w)  # (b f) c H W


@dataclass
class AutoencoderKLTemporalDecoderConfig(Config):
    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",)
    block_out_channels: tuple[int, ...] = (64,)
    layers_per_block: int = 1
    latent_channels: int = 4
    sample_size: int | tuple[int, ...] = 32
    scaling_factor: float = 0.18215
    force_upcast: bool = True

    def validate(self) -> None:
        if len(self.down_block_types) != len(self.block_out_channels):
            raise ConfigError(f"AutoencoderKLTemporalDecoder: down_block_types ({len(self.down_block_types)}) and "
                              f"block_out_channels ({len(self.block_out_channels)}) must have the same length")
        bad = [c for c in self.block_out_channels if c % 32]
        if bad:
            raise ConfigError(f"AutoencoderKLTemporalDecoder: block_out_channels {bad} are not divisible by 32 "
                              "(the group norms' group count)")


class AutoencoderKLTemporalDecoder(ModelMixin, AttentionProcessorMixin):
    config_class = AutoencoderKLTemporalDecoderConfig
    _supports_gradient_checkpointing = True

    def __init__(self, config: AutoencoderKLTemporalDecoderConfig | None = None, **kwargs):
        super().__init__()
        cfg = self.register_config(config, kwargs)
        self.encoder = Encoder(in_channels=cfg.in_channels, out_channels=cfg.latent_channels, down_block_types=cfg.down_block_types,
                               block_out_channels=cfg.block_out_channels, layers_per_block=cfg.layers_per_block, double_z=True)
        self.decoder = TemporalDecoder(in_channels=cfg.latent_channels, out_channels=cfg.out_channels,
                                       block_out_channels=cfg.block_out_channels, layers_per_block=cfg.layers_per_block)
        self.quant_conv = nn.Conv2d(2 * cfg.latent_channels, 2 * cfg.latent_channels, 1)
        self.use_slicing = False

    # --- memory options ---
    def enable_slicing(self) -> None:
        """Encode one image and decode one video (``num_frames`` latents) at a time: same result, less memory."""
        self.use_slicing = True

    def disable_slicing(self) -> None:
        self.use_slicing = False

    def enable_tiling(self) -> None:
        raise NotImplementedError("AutoencoderKLTemporalDecoder has no tiled decoding (neither has diffusers'); to save "
                                  "memory decode fewer frames at a time (the pipeline's decode_chunk_size) or enable_slicing()")

    def disable_tiling(self) -> None:
        """Tiling is never on; kept for API symmetry."""

    # --- encode / decode ---
    def encode(self, x: torch.Tensor, return_dict: bool = True):
        """Images (b, c, H, W) -> ``AutoencoderKLOutput(latent_dist=DiagonalGaussianDistribution)``."""
        _check_4d("encode", x, self.config.in_channels, "images")
        if self.use_slicing and x.shape[0] > 1:
            moments = torch.cat([self.quant_conv(self.encoder(one)) for one in x.split(1)])
        else:
            moments = self.quant_conv(self.encoder(x))  # b 2c h w
        posterior = DiagonalGaussianDistribution(moments)
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def decode(self, z: torch.Tensor, num_frames: int, return_dict: bool = True):
        """Latents ((b f), c, h, w), ``num_frames`` consecutive latents per video -> ``DecoderOutput(sample=frames)``."""
        _check_4d("decode", z, self.config.latent_channels, "latents")
        if num_frames < 1 or z.shape[0] % num_frames:
            raise ValueError(f"AutoencoderKLTemporalDecoder.decode: {z.shape[0]} latents cannot be split into videos of "
                             f"num_frames={num_frames}; pass a num_frames that divides the batch (b * f)")
        if self.use_slicing and z.shape[0] > num_frames:
            decoded = torch.cat([self._decode(video, num_frames) for video in z.split(num_frames)])
        else:
            decoded = self._decode(z, num_frames)
        return DecoderOutput(sample=decoded) if return_dict else (decoded,)

    def _decode(self, z: torch.Tensor, num_frames: int) -> torch.Tensor:
        indicator = torch.zeros(z.shape[0] // num_frames, num_frames, dtype=z.dtype, device=z.device)  # b f: all video
        return self.decoder(z, num_frames=num_frames, image_only_indicator=indicator)

    def forward(self, sample: torch.Tensor, sample_posterior: bool = False, return_dict: bool = True,
                generator: torch.Generator | None = None, num_frames: int = 1):
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        dec = self.decode(z, num_frames=num_frames).sample
        return DecoderOutput(sample=dec) if return_dict else (dec,)


def _check_4d(what: str, x: torch.Tensor, channels: int, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != channels:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        hint = "; fold frames into the batch first: (b f) c h w" if isinstance(x, torch.Tensor) and x.ndim == 5 else ""
        raise ValueError(f"AutoencoderKLTemporalDecoder.{what} expects {name} of shape (batch, {channels}, height, width), "
                         f"got {got}{hint}")
