"""VAE encoder/decoder stacks and the diagonal Gaussian posterior (state-dict compatible with diffusers' vae.py).

Usage::

    from vidiff.layers.vae_blocks import Encoder, Decoder, DiagonalGaussianDistribution

    enc = Encoder(in_channels=3, out_channels=4, down_block_types=("DownEncoderBlock2D",) * 4,
                  block_out_channels=(128, 256, 512, 512), layers_per_block=2, double_z=True)
    moments = enc(images)                       # (b, 3, H, W) -> (b, 8, H/8, W/8)
    posterior = DiagonalGaussianDistribution(moments)
    z = posterior.sample(generator)             # or posterior.mode()
    dec = Decoder(in_channels=4, out_channels=3, up_block_types=("UpDecoderBlock2D",) * 4,
                  block_out_channels=(128, 256, 512, 512), layers_per_block=2)
    images = dec(z)                             # (b, 4, h, w) -> (b, 3, 8h, 8w)
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..runtime.layout import GroupNorm
from ..runtime.memory import release_free_memory_before
from ..runtime.random import randn_tensor
from .attention import Attention
from .resnets import ResnetBlock2D
from .unet_passes import downsamplers, upsamplers

Step = Callable[[torch.Tensor], torch.Tensor]

logger = logging.getLogger(__name__)


def _require_group_norm(block: str, resnet_time_scale_shift: str) -> None:
    if resnet_time_scale_shift == "spatial":
        raise NotImplementedError(f"{block}: resnet_time_scale_shift='spatial' (MoVQ spatial norm) is not supported; "
                                  "the video VAEs use 'default'")


def _resnets(in_channels: int, out_channels: int, num_layers: int, temb_channels: int | None, resnet_eps: float,
             resnet_groups: int, dropout: float, resnet_time_scale_shift: str, resnet_act_fn: str,
             output_scale_factor: float, resnet_pre_norm: bool) -> nn.ModuleList:
    """``num_layers`` ResnetBlock2D; the first maps in_channels -> out_channels."""
    return nn.ModuleList(
        ResnetBlock2D(in_channels=in_channels if i == 0 else out_channels, out_channels=out_channels,
                      temb_channels=temb_channels, eps=resnet_eps, groups=resnet_groups, dropout=dropout,
                      time_embedding_norm=resnet_time_scale_shift, non_linearity=resnet_act_fn,
                      output_scale_factor=output_scale_factor, pre_norm=resnet_pre_norm)
        for i in range(num_layers))


class DownEncoderBlock2D(nn.Module):
    """Resnets (no time embedding), then an optional stride-2 conv."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0, num_layers: int = 1,
                 resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish",
                 resnet_groups: int = 32, resnet_pre_norm: bool = True, output_scale_factor: float = 1.0,
                 add_downsample: bool = True, downsample_padding: int = 1):
        super().__init__()
        _require_group_norm(type(self).__name__, resnet_time_scale_shift)
        self.resnets = _resnets(in_channels, out_channels, num_layers, None, resnet_eps, resnet_groups, dropout,
                                resnet_time_scale_shift, resnet_act_fn, output_scale_factor, resnet_pre_norm)
        self.downsamplers = downsamplers(out_channels, add_downsample, downsample_padding)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        for resnet in self.resnets:
            hidden_states = resnet(hidden_states, temb=None)
        for downsampler in self.downsamplers or ():
            hidden_states = downsampler(hidden_states)
        return hidden_states


class UpDecoderBlock2D(nn.Module):
    """Resnets, then an optional nearest x2 + conv."""

    def __init__(self, in_channels: int, out_channels: int, resolution_idx: int | None = None, dropout: float = 0.0,
                 num_layers: int = 1, resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default",
                 resnet_act_fn: str = "swish", resnet_groups: int = 32, resnet_pre_norm: bool = True,
                 output_scale_factor: float = 1.0, add_upsample: bool = True, temb_channels: int | None = None):
        super().__init__()
        _require_group_norm(type(self).__name__, resnet_time_scale_shift)
        self.resnets = _resnets(in_channels, out_channels, num_layers, temb_channels, resnet_eps, resnet_groups,
                                dropout, resnet_time_scale_shift, resnet_act_fn, output_scale_factor, resnet_pre_norm)
        self.upsamplers = upsamplers(out_channels, add_upsample)
        self.resolution_idx = resolution_idx

    def steps(self, temb: torch.Tensor | None = None) -> list[Step]:
        """The block as one-argument steps: its resnets, then the upsampler (see :func:`block_steps`)."""
        return [functools.partial(resnet, temb=temb) for resnet in self.resnets] + list(self.upsamplers or ())

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        for step in self.steps(temb):
            hidden_states = step(hidden_states)
        return hidden_states


class UNetMidBlock2D(nn.Module):
    """resnet, then ``num_layers`` x (single-head-group self-attention over pixels, resnet)."""

    def __init__(self, in_channels: int, temb_channels: int | None, dropout: float = 0.0, num_layers: int = 1,
                 resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish",
                 resnet_groups: int | None = 32, attn_groups: int | None = None, resnet_pre_norm: bool = True,
                 add_attention: bool = True, attention_head_dim: int | None = 1, output_scale_factor: float = 1.0):
        super().__init__()
        _require_group_norm(type(self).__name__, resnet_time_scale_shift)
        resnet_groups = resnet_groups if resnet_groups is not None else min(in_channels // 4, 32)
        self.add_attention = add_attention
        if attn_groups is None:
            attn_groups = resnet_groups if resnet_time_scale_shift == "default" else None
        if attention_head_dim is None:
            logger.warning("attention_head_dim=None: defaulting it to in_channels (%d)", in_channels)
            attention_head_dim = in_channels
        self.attentions = nn.ModuleList(
            Attention(in_channels, heads=in_channels // attention_head_dim, dim_head=attention_head_dim,
                      rescale_output_factor=output_scale_factor, eps=resnet_eps, norm_num_groups=attn_groups,
                      residual_connection=True, bias=True, upcast_softmax=True, _from_deprecated_attn_block=True)
            if add_attention else None
            for _ in range(num_layers))
        self.resnets = _resnets(in_channels, in_channels, num_layers + 1, temb_channels, resnet_eps, resnet_groups,
                                dropout, resnet_time_scale_shift, resnet_act_fn, output_scale_factor, resnet_pre_norm)
        self.gradient_checkpointing = False

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        hidden_states = self.resnets[0](hidden_states, temb)
        for attn, resnet in zip(self.attentions, self.resnets[1:]):
            if attn is not None:
                hidden_states = attn(hidden_states, temb=temb)
            hidden_states = _maybe_checkpoint(self, resnet, hidden_states, temb)
        return hidden_states


def _maybe_checkpoint(owner: nn.Module, fn: nn.Module, *args):
    if torch.is_grad_enabled() and owner.gradient_checkpointing:
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def block_steps(owner: nn.Module, block: nn.Module, *args) -> list[Step]:
    """A decoder up block as the steps its decoder runs in turn (``for step in ...: sample = step(sample)``).

    Called as one module, a block's input stays alive until the block returns (its caller holds it), though only
    the first resnet reads it: in a decoder that input is the previous block's upsampled map, the largest of the
    block. Run step by step from the decoder's own loop, each step's input is freed when the next step starts
    (SVD's decoder at 256x256: 32 MiB less at the peak). With gradient checkpointing the block stays one step.
    """
    if torch.is_grad_enabled() and owner.gradient_checkpointing:
        return [lambda x: checkpoint(block, x, *args, use_reentrant=False)]
    return block.steps(*args)


_DOWN_BLOCKS = {"DownEncoderBlock2D": DownEncoderBlock2D}
_UP_BLOCKS = {"UpDecoderBlock2D": UpDecoderBlock2D}


def _block_class(kind: str, name: str, table: dict[str, type]) -> type:
    name = name[7:] if name.startswith("UNetRes") else name
    if name not in table:
        raise NotImplementedError(f"{kind} block type {name!r} is not supported by vidiff's VAE; "
                                  f"supported: {sorted(table)}")
    return table[name]


class Encoder(nn.Module):
    """conv_in -> down blocks -> mid block -> GroupNorm/SiLU -> conv_out (2x channels with ``double_z``)."""

    def __init__(self, in_channels: int = 3, out_channels: int = 3,
                 down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",), block_out_channels: tuple[int, ...] = (64,),
                 layers_per_block: int = 2, norm_num_groups: int = 32, act_fn: str = "silu", double_z: bool = True,
                 mid_block_add_attention: bool = True):
        super().__init__()
        self.layers_per_block = layers_per_block
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=3, stride=1, padding=1)
        self.down_blocks = nn.ModuleList()
        output_channel = block_out_channels[0]
        for i, block_type in enumerate(down_block_types):
            input_channel, output_channel = output_channel, block_out_channels[i]
            self.down_blocks.append(_block_class("down", block_type, _DOWN_BLOCKS)(
                num_layers=layers_per_block, in_channels=input_channel, out_channels=output_channel,
                add_downsample=i != len(block_out_channels) - 1, resnet_eps=1e-6, downsample_padding=0,
                resnet_act_fn=act_fn, resnet_groups=norm_num_groups))
        self.mid_block = UNetMidBlock2D(
            in_channels=block_out_channels[-1], resnet_eps=1e-6, resnet_act_fn=act_fn, output_scale_factor=1,
            resnet_time_scale_shift="default", attention_head_dim=block_out_channels[-1],
            resnet_groups=norm_num_groups, temb_channels=None, add_attention=mid_block_add_attention)
        self.conv_norm_out = GroupNorm(num_channels=block_out_channels[-1], num_groups=norm_num_groups, eps=1e-6)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(block_out_channels[-1], 2 * out_channels if double_z else out_channels, 3, padding=1)
        self.gradient_checkpointing = False

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        sample = self.conv_in(sample)  # b c0 H W
        for down_block in self.down_blocks:
            sample = _maybe_checkpoint(self, down_block, sample)
        sample = _maybe_checkpoint(self, self.mid_block, sample)  # b c_last h w
        return self.conv_out(self.conv_act(self.conv_norm_out(sample)))


class Decoder(nn.Module):
    """conv_in -> mid block -> up blocks (layers_per_block + 1 resnets each) -> GroupNorm/SiLU -> conv_out."""

    def __init__(self, in_channels: int = 3, out_channels: int = 3,
                 up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",), block_out_channels: tuple[int, ...] = (64,),
                 layers_per_block: int = 2, norm_num_groups: int = 32, act_fn: str = "silu", norm_type: str = "group",
                 mid_block_add_attention: bool = True):
        super().__init__()
        if norm_type != "group":
            raise NotImplementedError(f"Decoder norm_type={norm_type!r} is not supported; the video VAEs use 'group'")
        self.layers_per_block = layers_per_block
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[-1], kernel_size=3, stride=1, padding=1)
        self.up_blocks = nn.ModuleList()  # registered before mid_block: the reference's state-dict order
        self.mid_block = UNetMidBlock2D(
            in_channels=block_out_channels[-1], resnet_eps=1e-6, resnet_act_fn=act_fn, output_scale_factor=1,
            resnet_time_scale_shift="default", attention_head_dim=block_out_channels[-1],
            resnet_groups=norm_num_groups, temb_channels=None, add_attention=mid_block_add_attention)
        reversed_channels = list(reversed(block_out_channels))
        output_channel = reversed_channels[0]
        for i, block_type in enumerate(up_block_types):
            prev_output_channel, output_channel = output_channel, reversed_channels[i]
            self.up_blocks.append(_block_class("up", block_type, _UP_BLOCKS)(
                num_layers=layers_per_block + 1, in_channels=prev_output_channel, out_channels=output_channel,
                add_upsample=i != len(block_out_channels) - 1, resnet_eps=1e-6, resnet_act_fn=act_fn,
                resnet_groups=norm_num_groups, temb_channels=None, resnet_time_scale_shift="default"))
        self.conv_norm_out = GroupNorm(num_channels=block_out_channels[0], num_groups=norm_num_groups, eps=1e-6)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, 3, padding=1)
        self.gradient_checkpointing = False

    def forward(self, sample: torch.Tensor, latent_embeds: torch.Tensor | None = None) -> torch.Tensor:
        if latent_embeds is not None:
            raise NotImplementedError("latent_embeds (spatial norm) is not supported by this Decoder")
        sample = self.conv_in(sample)  # b c_last h w
        sample = _maybe_checkpoint(self, self.mid_block, sample)
        for up_block in self.up_blocks:
            release_free_memory_before(sample)
            for step in block_steps(self, up_block):
                sample = step(sample)
        return self.conv_out(self.conv_act(self.conv_norm_out(sample)))  # b out H W


class DiagonalGaussianDistribution:
    """N(mean, exp(logvar)) from ``parameters`` = cat([mean, logvar], dim=1); logvar clamped to [-30, 20]."""

    def __init__(self, parameters: torch.Tensor, deterministic: bool = False):
        self.parameters = parameters
        self.mean, logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = torch.clamp(logvar, -30.0, 20.0)
        self.deterministic = deterministic
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)
        if deterministic:
            self.var = self.std = torch.zeros_like(self.mean)

    def sample(self, generator: torch.Generator | list[torch.Generator] | None = None) -> torch.Tensor:
        noise = randn_tensor(self.mean.shape, generator=generator, device=self.parameters.device,
                             dtype=self.parameters.dtype)
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self, other: "DiagonalGaussianDistribution | None" = None) -> torch.Tensor:
        if self.deterministic:
            return torch.Tensor([0.0])
        if other is None:
            return 0.5 * torch.sum(torch.pow(self.mean, 2) + self.var - 1.0 - self.logvar, dim=[1, 2, 3])
        return 0.5 * torch.sum(torch.pow(self.mean - other.mean, 2) / other.var + self.var / other.var
                               - 1.0 - self.logvar + other.logvar, dim=[1, 2, 3])

    def nll(self, sample: torch.Tensor, dims: tuple[int, ...] = (1, 2, 3)) -> torch.Tensor:
        if self.deterministic:
            return torch.Tensor([0.0])
        return 0.5 * torch.sum(np.log(2.0 * np.pi) + self.logvar + torch.pow(sample - self.mean, 2) / self.var,
                               dim=list(dims))
