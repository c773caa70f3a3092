"""Timestep and position embeddings shared by every UNet and transformer.

State-dict keys follow the reference: ``TimestepEmbedding`` holds ``linear_1``, ``linear_2`` and the optional
``cond_proj``; ``SinusoidalPositionalEmbedding`` holds the ``pe`` buffer.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..runtime.linear import Linear
from .resnets import get_activation

# Devices without float64 / int64 kernels: timesteps given as Python numbers are made in 32 bits there.
_NO_64BIT_DEVICES = frozenset({"mps", "npu", "neuron"})


def get_timestep_embedding(
    timesteps: torch.Tensor,
    embedding_dim: int,
    flip_sin_to_cos: bool = False,
    downscale_freq_shift: float = 1,
    scale: float = 1,
    max_period: int = 10000,
) -> torch.Tensor:
    """Sinusoidal embedding of a 1-D tensor of (possibly fractional) timesteps: (n,) -> (n, embedding_dim).

    Frequencies are ``max_period ** (-i / (half - downscale_freq_shift))``; the output is ``[sin, cos]``
    (``[cos, sin]`` with ``flip_sin_to_cos``), zero-padded by one column when ``embedding_dim`` is odd.
    """
    if timesteps.ndim != 1:
        raise ValueError(
            f"get_timestep_embedding expects a 1-D tensor of timesteps (one per batch element), got shape "
            f"{tuple(timesteps.shape)}; flatten it or index one timestep per sample first."
        )
    half = embedding_dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(exponent / (half - downscale_freq_shift))
    args = scale * (timesteps[:, None].float() * freqs[None, :])  # n half
    sin, cos = torch.sin(args), torch.cos(args)
    emb = torch.cat([cos, sin] if flip_sin_to_cos else [sin, cos], dim=-1)  # n (2 half)
    if embedding_dim % 2 == 1:
        emb = nn.functional.pad(emb, (0, 1, 0, 0))
    return emb


def timesteps_for_batch(timestep: torch.Tensor | float | int, batch_size: int, device: torch.device) -> torch.Tensor:
    """A UNet's ``timestep`` argument (number, 0-d or 1-d tensor) as a (batch_size,) tensor on ``device``.

    Python floats become float64 and ints int64 (32-bit on devices without 64-bit support), exactly as the
    reference does, so the sinusoidal embedding sees the same values.
    """
    if not torch.is_tensor(timestep):
        dtype = torch.float64 if isinstance(timestep, float) else torch.int64
        if device.type in _NO_64BIT_DEVICES:
            dtype = torch.float32 if dtype == torch.float64 else torch.int32
        timestep = torch.tensor([timestep], dtype=dtype, device=device)
    elif timestep.ndim == 0:
        timestep = timestep[None].to(device)
    elif timestep.ndim != 1 or timestep.shape[0] not in (1, batch_size):
        raise ValueError(
            f"timestep must be a number, a 0-d tensor or a 1-d tensor of length 1 or batch size {batch_size}; "
            f"got a tensor of shape {tuple(timestep.shape)}."
        )
    return timestep.expand(batch_size)


class Timesteps(nn.Module):
    """Parameter-free sinusoidal projection of timesteps: (n,) -> (n, num_channels), always float32."""

    def __init__(
        self,
        num_channels: int,
        flip_sin_to_cos: bool,
        downscale_freq_shift: float,
        scale: int = 1,
        max_period: int = 10000,
    ):
        super().__init__()
        self.num_channels = num_channels
        self.flip_sin_to_cos = flip_sin_to_cos
        self.downscale_freq_shift = downscale_freq_shift
        self.scale = scale
        self.max_period = max_period

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        return get_timestep_embedding(
            timesteps,
            self.num_channels,
            flip_sin_to_cos=self.flip_sin_to_cos,
            downscale_freq_shift=self.downscale_freq_shift,
            scale=self.scale,
            max_period=self.max_period,
        )


class TimestepEmbedding(nn.Module):
    """MLP on a projected timestep: [+ cond_proj(condition)] -> linear_1 -> act -> linear_2 [-> post_act]."""

    def __init__(
        self,
        in_channels: int,
        time_embed_dim: int,
        act_fn: str = "silu",
        out_dim: int | None = None,
        post_act_fn: str | None = None,
        cond_proj_dim: int | None = None,
        sample_proj_bias: bool = True,
    ):
        super().__init__()
        self.linear_1 = Linear(in_channels, time_embed_dim, sample_proj_bias)
        self.cond_proj = Linear(cond_proj_dim, in_channels, bias=False) if cond_proj_dim is not None else None
        self.act = get_activation(act_fn)
        self.linear_2 = Linear(time_embed_dim, out_dim if out_dim is not None else time_embed_dim, sample_proj_bias)
        self.post_act = get_activation(post_act_fn) if post_act_fn is not None else None

    def forward(self, sample: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        if condition is not None:
            if self.cond_proj is None:
                raise ValueError(
                    "a timestep condition (timestep_cond) was given but this embedding has no cond_proj; "
                    "build the model with time_cond_proj_dim set, or pass timestep_cond=None."
                )
            sample = sample + self.cond_proj(condition)
        sample = self.linear_2(self.act(self.linear_1(sample)))
        if self.post_act is not None:
            sample = self.post_act(sample)
        return sample


def add_unet_stem(unet: nn.Module, in_channels: int, width: int, time_embed_dim: int, *, conv_kernel: int = 3,
                  flip_sin_to_cos: bool = True, freq_shift: float = 0, **embedding_options) -> None:
    """Register a UNet's ``conv_in`` (``in_channels`` -> ``width``), ``time_proj`` (sinusoidal, ``width`` wide) and
    ``time_embedding`` (MLP to ``time_embed_dim``; ``embedding_options`` go to ``TimestepEmbedding``), in that order."""
    unet.conv_in = nn.Conv2d(in_channels, width, kernel_size=conv_kernel, padding=(conv_kernel - 1) // 2)
    unet.time_proj = Timesteps(width, flip_sin_to_cos, freq_shift)
    unet.time_embedding = TimestepEmbedding(width, time_embed_dim, **embedding_options)


def add_text_time_embedding(unet: nn.Module, addition_time_embed_dim: int, projection_dim: int, time_embed_dim: int,
                            flip_sin_to_cos: bool = True, freq_shift: float = 0) -> None:
    """Register the SDXL-style ``add_time_proj`` (sinusoidal time ids) and ``add_embedding`` (pooled text + time ids
    -> ``time_embed_dim``)."""
    unet.add_time_proj = Timesteps(addition_time_embed_dim, flip_sin_to_cos, freq_shift)
    unet.add_embedding = TimestepEmbedding(projection_dim, time_embed_dim)


class SinusoidalPositionalEmbedding(nn.Module):
    """Adds fixed sin/cos position codes to a (batch, seq, dim) sequence (buffer ``pe``: 1 max_seq_length dim)."""

    def __init__(self, embed_dim: int, max_seq_length: int = 32):
        super().__init__()
        # computed on the CPU even while a model is built on the meta device (loading): a few hundred values, cheaper
        # than the meta kernels of the strided writes below (0.15 s for AnimateDiff's 32 motion modules)
        position = torch.arange(max_seq_length, device="cpu").unsqueeze(1)
        div_term = torch.exp(torch.arange(0, embed_dim, 2, device="cpu") * (-math.log(10000.0) / embed_dim))
        pe = torch.zeros(1, max_seq_length, embed_dim, device="cpu")
        pe[0, :, 0::2] = torch.sin(position * div_term)
        pe[0, :, 1::2] = torch.cos(position * div_term)
        device = torch.get_default_device()  # a `with torch.device(...)` block the model is built in
        self.register_buffer("pe", pe if device.type in ("cpu", "meta") else pe.to(device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq_length = x.shape[1]
        if seq_length > self.pe.shape[1]:
            raise ValueError(
                f"sequence length {seq_length} exceeds the {self.pe.shape[1]} positions this embedding was built for "
                "(num_positional_embeddings / max_seq_length); use fewer frames or a model built for more."
            )
        return x + self.pe[:, :seq_length]
