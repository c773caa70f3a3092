"""Spatial and temporal transformers: feed-forward, the basic block, and the two image/video wrappers.

Keys follow the reference: ``ff.net.0.proj`` / ``ff.net.2``, ``norm1``/``attn1``/``norm2``/``attn2``/``norm3``,
``norm``/``proj_in``/``transformer_blocks``/``proj_out``. Only the continuous-input, ``layer_norm`` variants that
the video UNets (ModelScope, SD 1.5, AnimateDiff) use are built; the others raise a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..models.outputs import BaseOutput
from ..runtime.chunking import gated_gelu, map_rows, plain_linear
from ..runtime.layout import GroupNorm, is_channels_last, tokens_to_map
from ..runtime.linear import Linear
from .attention import Attention
from .embeddings import SinusoidalPositionalEmbedding


# ---------------------------------------------------------------------------------------------- feed-forward


class GELU(nn.Module):
    """Linear projection then GELU (``approximate="tanh"`` for the tanh form)."""

    def __init__(self, dim_in: int, dim_out: int, approximate: str = "none", bias: bool = True):
        super().__init__()
        self.proj = Linear(dim_in, dim_out, bias=bias)
        self.approximate = approximate

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(hidden_states), approximate=self.approximate)


class GEGLU(nn.Module):
    """Gated GELU: one projection to 2x width, split into value and gate, ``value * gelu(gate)``."""

    def __init__(self, dim_in: int, dim_out: int, bias: bool = True):
        super().__init__()
        self.proj = Linear(dim_in, dim_out * 2, bias=bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled() and plain_linear(self.proj, hidden_states):
            return gated_gelu(hidden_states, self.proj.weight, self.proj.bias)  # the halves as two products
        hidden_states, gate = self.proj(hidden_states).chunk(2, dim=-1)
        if torch.is_grad_enabled() and hidden_states.requires_grad:
            return hidden_states * F.gelu(gate)
        # no autograd: in place on the projection's two halves, the same values without two temporaries
        return hidden_states.mul_(torch.ops.aten.gelu_(gate))


class ApproximateGELU(nn.Module):
    """Linear projection then the sigmoid approximation ``x * sigmoid(1.702 x)``."""

    def __init__(self, dim_in: int, dim_out: int, bias: bool = True):
        super().__init__()
        self.proj = Linear(dim_in, dim_out, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        return x * torch.sigmoid(1.702 * x)


_FF_ACTIVATIONS = {
    "gelu": lambda i, o, b: GELU(i, o, bias=b),
    "gelu-approximate": lambda i, o, b: GELU(i, o, approximate="tanh", bias=b),
    "geglu": lambda i, o, b: GEGLU(i, o, bias=b),
    "geglu-approximate": lambda i, o, b: ApproximateGELU(i, o, bias=b),
}


class FeedForward(nn.Module):
    """``net = [activation-with-projection, Dropout, Linear(inner_dim, dim_out)(, Dropout)]``."""

    def __init__(
        self,
        dim: int,
        dim_out: int | None = None,
        mult: int = 4,
        dropout: float = 0.0,
        activation_fn: str = "geglu",
        final_dropout: bool = False,
        inner_dim: int | None = None,
        bias: bool = True,
    ):
        super().__init__()
        if activation_fn not in _FF_ACTIVATIONS:
            raise ValueError(f"FeedForward activation_fn {activation_fn!r} is not supported; use one of {sorted(_FF_ACTIVATIONS)}")
        inner_dim = int(dim * mult) if inner_dim is None else inner_dim
        dim_out = dim_out if dim_out is not None else dim
        layers = [
            _FF_ACTIVATIONS[activation_fn](dim, inner_dim, bias), nn.Dropout(dropout), Linear(inner_dim, dim_out, bias=bias)
        ]  # fmt: skip
        if final_dropout:
            layers.append(nn.Dropout(dropout))
        self.net = nn.ModuleList(layers)
        self._width = 2 * inner_dim if activation_fn == "geglu" else inner_dim  # the widest intermediate

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return map_rows(self._forward, hidden_states, self._width)  # blocks of tokens: same values, less memory

    def _forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for module in self.net:
            hidden_states = module(hidden_states)
        return hidden_states


def chunked_feed_forward(ff: nn.Module, hidden_states: torch.Tensor, chunk_dim: int, chunk_size: int) -> torch.Tensor:
    """Run ``ff`` on slices of ``chunk_size`` along ``chunk_dim`` and concatenate (same result, less peak memory)."""
    length = hidden_states.shape[chunk_dim]
    if length % chunk_size != 0:
        raise ValueError(
            f"feed-forward chunking: dimension {chunk_dim} has size {length}, which is not divisible by chunk size "
            f"{chunk_size}; pick a chunk_size that divides it in enable_forward_chunking(chunk_size, dim)."
        )
    return torch.cat([ff(part) for part in hidden_states.split(chunk_size, dim=chunk_dim)], dim=chunk_dim)


class ForwardChunkingMixin:
    """``enable_forward_chunking`` / ``disable_forward_chunking`` for models holding transformer blocks."""

    def enable_forward_chunking(self, chunk_size: int | None = None, dim: int = 0) -> None:
        """Run every feed-forward in chunks of ``chunk_size`` (default 1) along ``dim`` (0: batch, 1: sequence)."""
        if dim not in (0, 1):
            raise ValueError(f"enable_forward_chunking: dim must be 0 (batch) or 1 (sequence length), got {dim}")
        self._set_chunking(chunk_size or 1, dim)

    def disable_forward_chunking(self) -> None:
        self._set_chunking(None, 0)

    def _set_chunking(self, chunk_size: int | None, dim: int) -> None:
        for module in self.modules():  # type: ignore[attr-defined]
            if module is not self and hasattr(module, "set_chunk_feed_forward"):
                module.set_chunk_feed_forward(chunk_size=chunk_size, dim=dim)


# ---------------------------------------------------------------------------------------------- basic block


class BasicTransformerBlock(nn.Module):
    """Pre-norm block: self-attention (attn1), cross- or second self-attention (attn2), feed-forward (ff).

    ``only_cross_attention`` makes attn1 attend to ``encoder_hidden_states`` too; ``double_self_attention``
    makes attn2 a self-attention. Feed-forward chunking: :meth:`set_chunk_feed_forward`.
    """

    def __init__(
        self,
        dim: int,
        num_attention_heads: int,
        attention_head_dim: int,
        dropout: float = 0.0,
        cross_attention_dim: int | None = None,
        activation_fn: str = "geglu",
        num_embeds_ada_norm: int | None = None,
        attention_bias: bool = False,
        only_cross_attention: bool = False,
        double_self_attention: bool = False,
        upcast_attention: bool = False,
        norm_elementwise_affine: bool = True,
        norm_type: str = "layer_norm",
        norm_eps: float = 1e-5,
        final_dropout: bool = False,
        attention_type: str = "default",
        positional_embeddings: str | None = None,
        num_positional_embeddings: int | None = None,
        ada_norm_continous_conditioning_embedding_dim: int | None = None,
        ada_norm_bias: int | None = None,
        ff_inner_dim: int | None = None,
        ff_bias: bool = True,
        attention_out_bias: bool = True,
    ):
        super().__init__()
        _check_block_options(norm_type, num_embeds_ada_norm, attention_type, positional_embeddings, num_positional_embeddings)
        self.dim = dim
        self.num_attention_heads = num_attention_heads
        self.attention_head_dim = attention_head_dim
        self.only_cross_attention = only_cross_attention
        self.double_self_attention = double_self_attention
        self.norm_type = norm_type
        attn_kwargs = dict(
            query_dim=dim, heads=num_attention_heads, dim_head=attention_head_dim, dropout=dropout,
            bias=attention_bias, upcast_attention=upcast_attention, out_bias=attention_out_bias,
        )  # fmt: skip

        self.pos_embed = (
            SinusoidalPositionalEmbedding(dim, max_seq_length=num_positional_embeddings) if positional_embeddings else None
        )
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=norm_elementwise_affine, eps=norm_eps)
        self.attn1 = Attention(cross_attention_dim=cross_attention_dim if only_cross_attention else None, **attn_kwargs)
        if cross_attention_dim is not None or double_self_attention:
            self.norm2 = nn.LayerNorm(dim, norm_eps, norm_elementwise_affine)
            self.attn2 = Attention(cross_attention_dim=None if double_self_attention else cross_attention_dim, **attn_kwargs)
        else:
            self.norm2 = None
            self.attn2 = None
        self.norm3 = nn.LayerNorm(dim, norm_eps, norm_elementwise_affine)
        self.ff = FeedForward(
            dim, dropout=dropout, activation_fn=activation_fn, final_dropout=final_dropout, inner_dim=ff_inner_dim, bias=ff_bias
        )
        self._chunk_size: int | None = None
        self._chunk_dim = 0

    def set_chunk_feed_forward(self, chunk_size: int | None, dim: int = 0) -> None:
        self._chunk_size = chunk_size
        self._chunk_dim = dim

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        timestep: torch.LongTensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        class_labels: torch.LongTensor | None = None,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        kwargs = dict(cross_attention_kwargs or {})
        if kwargs.pop("gligen", None) is not None:
            raise NotImplementedError("GLIGEN (cross_attention_kwargs['gligen']) is not supported by vidiff")

        # 1. self-attention (or cross-attention when only_cross_attention)                    b n d
        norm_hidden_states = self._maybe_pos_embed(self.norm1(hidden_states))
        context = encoder_hidden_states if self.only_cross_attention else None
        attn_output = self.attn1(norm_hidden_states, encoder_hidden_states=context, attention_mask=attention_mask, **kwargs)
        hidden_states = _squeeze_heads(attn_output + hidden_states)

        # 2. cross-attention (self-attention again when double_self_attention)
        if self.attn2 is not None:
            norm_hidden_states = self._maybe_pos_embed(self.norm2(hidden_states))
            attn_output = self.attn2(
                norm_hidden_states, encoder_hidden_states=encoder_hidden_states, attention_mask=encoder_attention_mask, **kwargs
            )
            hidden_states = attn_output + hidden_states

        # 3. feed-forward
        norm_hidden_states = self.norm3(hidden_states)
        if self._chunk_size is not None:
            ff_output = chunked_feed_forward(self.ff, norm_hidden_states, self._chunk_dim, self._chunk_size)
        else:
            ff_output = self.ff(norm_hidden_states)
        return _squeeze_heads(ff_output + hidden_states)

    def _maybe_pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.pos_embed(x) if self.pos_embed is not None else x


def _squeeze_heads(x: torch.Tensor) -> torch.Tensor:
    """Some processors return b 1 n d; the reference drops that axis after each residual add."""
    return x.squeeze(1) if x.ndim == 4 else x


def _check_block_options(norm_type, num_embeds_ada_norm, attention_type, positional_embeddings, num_positional_embeddings):
    if norm_type != "layer_norm" or num_embeds_ada_norm is not None:
        raise NotImplementedError(
            f"BasicTransformerBlock: norm_type={norm_type!r} (num_embeds_ada_norm={num_embeds_ada_norm}) is not "
            "supported by vidiff; only norm_type='layer_norm' without num_embeds_ada_norm (the video UNets' blocks)."
        )
    if attention_type != "default":
        raise NotImplementedError(f"BasicTransformerBlock: attention_type={attention_type!r} (GLIGEN) is not supported; use 'default'")
    if positional_embeddings not in (None, "sinusoidal"):
        raise ValueError(f"positional_embeddings must be None or 'sinusoidal', got {positional_embeddings!r}")
    if positional_embeddings and num_positional_embeddings is None:
        raise ValueError("positional_embeddings is set, so num_positional_embeddings (the maximum sequence length) must be too")


# ---------------------------------------------------------------------------------------------- wrappers


def _mask_to_bias(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A (batch, key_tokens) keep-mask (1 keep, 0 discard) -> additive bias (batch, 1, key_tokens); biases pass through."""
    if mask is None or mask.ndim != 2:
        return mask
    return ((1 - mask.to(dtype)) * -10000.0).unsqueeze(1)


@dataclass
class Transformer2DModelOutput(BaseOutput):
    """``sample``: (batch, channels, height, width)."""

    sample: torch.Tensor


@dataclass
class TransformerTemporalModelOutput(BaseOutput):
    """``sample``: (batch * frames, channels, height, width)."""

    sample: torch.Tensor


class Transformer2DModel(nn.Module):
    """Transformer over the pixels of an image feature map: GroupNorm -> proj_in -> blocks -> proj_out, residual.

    ``use_linear_projection`` picks Linear projections (applied on tokens) over 1x1 convolutions (applied on maps).
    """

    def __init__(
        self,
        num_attention_heads: int = 16,
        attention_head_dim: int = 88,
        in_channels: int | None = None,
        out_channels: int | None = None,
        num_layers: int = 1,
        dropout: float = 0.0,
        norm_num_groups: int = 32,
        cross_attention_dim: int | None = None,
        attention_bias: bool = False,
        sample_size: int | None = None,
        num_vector_embeds: int | None = None,
        patch_size: int | None = None,
        activation_fn: str = "geglu",
        num_embeds_ada_norm: int | None = None,
        use_linear_projection: bool = False,
        only_cross_attention: bool = False,
        double_self_attention: bool = False,
        upcast_attention: bool = False,
        norm_type: str = "layer_norm",
        norm_elementwise_affine: bool = True,
        norm_eps: float = 1e-5,
        attention_type: str = "default",
        caption_channels: int | None = None,
        interpolation_scale: float | None = None,
        use_additional_conditions: bool | None = None,
    ):
        super().__init__()
        if in_channels is None or patch_size is not None or num_vector_embeds is not None:
            raise NotImplementedError(
                "Transformer2DModel: vidiff implements the continuous-input form only (in_channels set, no "
                f"patch_size / num_vector_embeds); got in_channels={in_channels}, patch_size={patch_size}, "
                f"num_vector_embeds={num_vector_embeds}."
            )
        self.num_attention_heads = num_attention_heads
        self.attention_head_dim = attention_head_dim
        self.in_channels = in_channels
        self.out_channels = in_channels if out_channels is None else out_channels
        self.inner_dim = inner_dim = num_attention_heads * attention_head_dim
        self.use_linear_projection = use_linear_projection
        self.is_input_continuous = True

        self.norm = GroupNorm(num_groups=norm_num_groups, num_channels=in_channels, eps=1e-6, affine=True)
        if use_linear_projection:
            self.proj_in = Linear(in_channels, inner_dim)
        else:
            self.proj_in = nn.Conv2d(in_channels, inner_dim, kernel_size=1, stride=1, padding=0)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(
                inner_dim, num_attention_heads, attention_head_dim, dropout=dropout, cross_attention_dim=cross_attention_dim,
                activation_fn=activation_fn, num_embeds_ada_norm=num_embeds_ada_norm, attention_bias=attention_bias,
                only_cross_attention=only_cross_attention, double_self_attention=double_self_attention,
                upcast_attention=upcast_attention, norm_type=norm_type, norm_elementwise_affine=norm_elementwise_affine,
                norm_eps=norm_eps, attention_type=attention_type,
            )  # fmt: skip
            for _ in range(num_layers)
        )
        if use_linear_projection:
            self.proj_out = Linear(inner_dim, self.out_channels)
        else:
            self.proj_out = nn.Conv2d(inner_dim, self.out_channels, kernel_size=1, stride=1, padding=0)

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        timestep: torch.LongTensor | None = None,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        class_labels: torch.LongTensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
    ):
        attention_mask = _mask_to_bias(attention_mask, hidden_states.dtype)
        encoder_attention_mask = _mask_to_bias(encoder_attention_mask, hidden_states.dtype)
        b, _, h, w = hidden_states.shape
        residual = hidden_states

        x = self.norm(hidden_states)  # b c h w
        if not self.use_linear_projection:
            x = self.proj_in(x)
        x = x.permute(0, 2, 3, 1).reshape(b, h * w, -1)  # b (h w) c
        if self.use_linear_projection:
            x = self.proj_in(x)

        for block in self.transformer_blocks:
            x = block(
                x, attention_mask=attention_mask, encoder_hidden_states=encoder_hidden_states,
                encoder_attention_mask=encoder_attention_mask, timestep=timestep,
                cross_attention_kwargs=cross_attention_kwargs, class_labels=class_labels,
            )  # fmt: skip

        if self.use_linear_projection:
            x = self.proj_out(x)
        x = tokens_to_map(x, h, w, like=residual)  # b c h w
        if not self.use_linear_projection:
            x = self.proj_out(x)
        x = x + residual
        return Transformer2DModelOutput(sample=x) if return_dict else (x,)


class TransformerTemporalModel(nn.Module):
    """Transformer along the frame axis, run independently at every pixel of a ``(b f) c h w`` feature map."""

    def __init__(
        self,
        num_attention_heads: int = 16,
        attention_head_dim: int = 88,
        in_channels: int | None = None,
        out_channels: int | None = None,
        num_layers: int = 1,
        dropout: float = 0.0,
        norm_num_groups: int = 32,
        cross_attention_dim: int | None = None,
        attention_bias: bool = False,
        sample_size: int | None = None,
        activation_fn: str = "geglu",
        norm_elementwise_affine: bool = True,
        double_self_attention: bool = True,
        positional_embeddings: str | None = None,
        num_positional_embeddings: int | None = None,
    ):
        super().__init__()
        if in_channels is None:
            raise ValueError("TransformerTemporalModel needs in_channels (the channel count of its input feature map)")
        self.num_attention_heads = num_attention_heads
        self.attention_head_dim = attention_head_dim
        self.in_channels = in_channels
        inner_dim = num_attention_heads * attention_head_dim

        self.norm = GroupNorm(num_groups=norm_num_groups, num_channels=in_channels, eps=1e-6, affine=True)
        self.proj_in = Linear(in_channels, inner_dim)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(
                inner_dim, num_attention_heads, attention_head_dim, dropout=dropout, cross_attention_dim=cross_attention_dim,
                activation_fn=activation_fn, attention_bias=attention_bias, double_self_attention=double_self_attention,
                norm_elementwise_affine=norm_elementwise_affine, positional_embeddings=positional_embeddings,
                num_positional_embeddings=num_positional_embeddings,
            )  # fmt: skip
            for _ in range(num_layers)
        )
        self.proj_out = Linear(inner_dim, in_channels)

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        timestep: torch.LongTensor | None = None,
        class_labels: torch.LongTensor | None = None,
        num_frames: int = 1,
        cross_attention_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
    ):
        bf, c, h, w = hidden_states.shape
        if bf % num_frames != 0:
            raise ValueError(f"TransformerTemporalModel: batch*frames={bf} is not a multiple of num_frames={num_frames}")
        b = bf // num_frames
        residual = hidden_states

        x = hidden_states.reshape(b, num_frames, c, h, w).permute(0, 2, 1, 3, 4)  # b c f h w
        x = self.norm(x)
        x = x.permute(0, 3, 4, 2, 1).reshape(b * h * w, num_frames, c)  # (b h w) f c
        x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(
                x, encoder_hidden_states=encoder_hidden_states, timestep=timestep,
                cross_attention_kwargs=cross_attention_kwargs, class_labels=class_labels,
            )  # fmt: skip
        x = self.proj_out(x)
        x = x.reshape(b, h, w, num_frames, c)
        if is_channels_last(residual):  # keep the input's layout: (b f) h w c in memory
            x = x.permute(0, 3, 1, 2, 4).contiguous().reshape(bf, h, w, c).permute(0, 3, 1, 2)
        else:  # contiguous as the reference: with one frame the permute would leave a channels-last view
            x = x.permute(0, 3, 4, 1, 2).contiguous().reshape(bf, c, h, w)  # (b f) c h w
        x = x + residual
        return TransformerTemporalModelOutput(sample=x) if return_dict else (x,)
