"""Multi-head attention with swappable processors, state-dict compatible with diffusers' ``Attention``.

Usage::

    from vidiff.layers.attention import Attention, AttnProcessor, AttentionProcessorMixin

    attn = Attention(query_dim=320, cross_attention_dim=768, heads=8, dim_head=40)   # to_q/to_k/to_v/to_out.0
    out = attn(hidden_states, encoder_hidden_states=text_emb)      # (b, n, 320) -> (b, n, 320)
    vae_attn = Attention(512, heads=1, dim_head=512, norm_num_groups=32, eps=1e-6, bias=True,
                         residual_connection=True, upcast_softmax=True)   # (b, c, h, w) -> (b, c, h, w)
    attn.set_processor(AttnProcessor())      # any diffusers-style processor: __call__(attn, hidden_states, ...)

    class MyModel(ModelMixin, AttentionProcessorMixin): ...   # attn_processors / set_attn_processor /
                                                               # set_default_attn_processor / set_attention_slice

Processors: ``AttnProcessor2_0`` (default, torch SDPA), ``AttnProcessor`` (baddbmm + softmax, honours
upcast_attention/upcast_softmax), ``SlicedAttnProcessor(slice_size)`` (AttnProcessor maths, a few heads at a time).
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from ..runtime.attention import scaled_dot_product_attention as sdpa
from ..runtime.layout import GroupNorm
from ..runtime.linear import Linear
from ..runtime.memory import add_

logger = logging.getLogger(__name__)

# Arguments of the reference's Attention that only non-video models use: name -> the default we support.
_UNSUPPORTED_DEFAULTS = {
    "kv_heads": None,
    "cross_attention_norm": None,
    "qk_norm": None,
    "added_kv_proj_dim": None,
    "spatial_norm_dim": None,
    "out_context_dim": None,
    "context_pre_only": None,
    "pre_only": False,
    "is_causal": False,
}


class Attention(nn.Module):
    """Multi-head (cross) attention; the maths lives in ``self.processor`` (see module docstring)."""

    def __init__(
        self,
        query_dim: int,
        cross_attention_dim: int | None = None,
        heads: int = 8,
        kv_heads: int | None = None,
        dim_head: int = 64,
        dropout: float = 0.0,
        bias: bool = False,
        upcast_attention: bool = False,
        upcast_softmax: bool = False,
        cross_attention_norm: str | None = None,
        cross_attention_norm_num_groups: int = 32,
        qk_norm: str | None = None,
        added_kv_proj_dim: int | None = None,
        added_proj_bias: bool | None = True,
        norm_num_groups: int | None = None,
        spatial_norm_dim: int | None = None,
        out_bias: bool = True,
        scale_qk: bool = True,
        only_cross_attention: bool = False,
        eps: float = 1e-5,
        rescale_output_factor: float = 1.0,
        residual_connection: bool = False,
        _from_deprecated_attn_block: bool = False,
        processor: Any = None,
        out_dim: int | None = None,
        out_context_dim: int | None = None,
        context_pre_only: bool | None = None,
        pre_only: bool = False,
        elementwise_affine: bool = True,
        is_causal: bool = False,
    ):
        super().__init__()
        given = dict(kv_heads=kv_heads, cross_attention_norm=cross_attention_norm, qk_norm=qk_norm,
                     added_kv_proj_dim=added_kv_proj_dim, spatial_norm_dim=spatial_norm_dim,
                     out_context_dim=out_context_dim, context_pre_only=context_pre_only, pre_only=pre_only,
                     is_causal=is_causal)
        bad = {k: v for k, v in given.items() if v != _UNSUPPORTED_DEFAULTS[k]}
        if bad:
            raise NotImplementedError(
                f"vidiff's Attention implements the video models' attention only; {bad} is not supported "
                f"(leave these arguments at their defaults {{{', '.join(f'{k}={_UNSUPPORTED_DEFAULTS[k]}' for k in bad)}}})."
            )
        if only_cross_attention:
            raise ValueError("`only_cross_attention=True` needs `added_kv_proj_dim`, which vidiff does not support; "
                             "set only_cross_attention=False.")
        self.inner_dim = out_dim if out_dim is not None else dim_head * heads
        self.inner_kv_dim = self.inner_dim
        self.query_dim = query_dim
        self.use_bias = bias
        self.is_cross_attention = cross_attention_dim is not None
        self.cross_attention_dim = cross_attention_dim if cross_attention_dim is not None else query_dim
        self.upcast_attention = upcast_attention
        self.upcast_softmax = upcast_softmax
        self.rescale_output_factor = rescale_output_factor
        self.residual_connection = residual_connection
        self.dropout = dropout
        self.fused_projections = False
        self.out_dim = out_dim if out_dim is not None else query_dim
        self.only_cross_attention = only_cross_attention
        self.added_kv_proj_dim = None
        self._from_deprecated_attn_block = _from_deprecated_attn_block
        self.scale_qk = scale_qk
        self.scale = dim_head**-0.5 if scale_qk else 1.0
        self.heads = out_dim // dim_head if out_dim is not None else heads
        self.sliceable_head_dim = heads  # slicing splits the (batch * heads) axis

        self.group_norm = (GroupNorm(num_channels=query_dim, num_groups=norm_num_groups, eps=eps, affine=True)
                           if norm_num_groups is not None else None)
        # Hooks the reference's processors look at; always absent here.
        self.spatial_norm = self.norm_cross = self.norm_q = self.norm_k = None
        self.add_q_proj = self.add_k_proj = self.add_v_proj = self.to_add_out = None

        self.to_q = Linear(query_dim, self.inner_dim, bias=bias)
        self.to_k = Linear(self.cross_attention_dim, self.inner_kv_dim, bias=bias)
        self.to_v = Linear(self.cross_attention_dim, self.inner_kv_dim, bias=bias)
        self.to_out = nn.ModuleList([Linear(self.inner_dim, self.out_dim, bias=out_bias), nn.Dropout(dropout)])
        self.set_processor(processor if processor is not None else self._default_processor())

    def _default_processor(self):
        return AttnProcessor2_0() if self.scale_qk else AttnProcessor()

    # --- processor management ---
    def set_processor(self, processor) -> None:
        if isinstance(getattr(self, "processor", None), nn.Module) and not isinstance(processor, nn.Module):
            logger.info("replacing the trainable processor %s with %s", self.processor, processor)
            self._modules.pop("processor")
        self.processor = processor

    def get_processor(self, return_deprecated_lora: bool = False):
        if not return_deprecated_lora:
            return self.processor
        return None

    def set_attention_slice(self, slice_size: int | None) -> None:
        if slice_size is not None and slice_size > self.sliceable_head_dim:
            raise ValueError(f"slice_size {slice_size} has to be smaller or equal to {self.sliceable_head_dim}.")
        self.set_processor(SlicedAttnProcessor(slice_size) if slice_size is not None else self._default_processor())

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, **cross_attention_kwargs) -> torch.Tensor:
        if cross_attention_kwargs:
            # like the reference: pass only the keywords the processor names; warn about the others
            accepted = inspect.signature(self.processor.__call__).parameters
            unused = [k for k, v in cross_attention_kwargs.items()
                      if k not in accepted and v is not None and k not in ("ip_adapter_masks", "ip_hidden_states")]
            if unused:
                logger.warning("cross_attention_kwargs %s are not expected by %s and will be ignored.",
                               unused, type(self.processor).__name__)
            cross_attention_kwargs = {k: v for k, v in cross_attention_kwargs.items() if k in accepted}
        if encoder_hidden_states is not None:
            repeats = context_repeats(hidden_states, encoder_hidden_states)
            if repeats > 1 and (attention_mask is not None or not getattr(self.processor, "shares_context", False)):
                encoder_hidden_states = encoder_hidden_states.repeat_interleave(repeats, dim=0)
        return self.processor(self, hidden_states, encoder_hidden_states=encoder_hidden_states,
                              attention_mask=attention_mask, **cross_attention_kwargs)

    # --- helpers the processors use ---
    def batch_to_head_dim(self, tensor: torch.Tensor) -> torch.Tensor:
        """(b * heads, n, d) -> (b, n, heads * d)"""
        bh, n, d = tensor.shape
        return tensor.reshape(bh // self.heads, self.heads, n, d).permute(0, 2, 1, 3).reshape(bh // self.heads, n, d * self.heads)

    def head_to_batch_dim(self, tensor: torch.Tensor, out_dim: int = 3) -> torch.Tensor:
        """(b, n, heads * d) -> (b * heads, n, d), or (b, heads, n, d) with out_dim=4."""
        if tensor.ndim == 3:
            b, n, dim = tensor.shape
            extra = 1
        else:
            b, extra, n, dim = tensor.shape
        tensor = tensor.reshape(b, n * extra, self.heads, dim // self.heads).permute(0, 2, 1, 3)
        if out_dim == 3:
            tensor = tensor.reshape(b * self.heads, n * extra, dim // self.heads)
        return tensor

    def get_attention_scores(self, query: torch.Tensor, key: torch.Tensor,
                             attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """softmax(scale * q k^T + mask) over (b * heads, n_q, n_k), upcast as configured."""
        dtype = query.dtype
        if self.upcast_attention:
            query, key = query.float(), key.float()
        if attention_mask is None:
            bias = torch.empty(query.shape[0], query.shape[1], key.shape[1], dtype=query.dtype, device=query.device)
            beta = 0
        else:
            bias, beta = attention_mask, 1
        scores = torch.baddbmm(bias, query, key.transpose(-1, -2), beta=beta, alpha=self.scale)
        if self.upcast_softmax:
            scores = scores.float()
        return scores.softmax(dim=-1).to(dtype)

    def prepare_attention_mask(self, attention_mask: torch.Tensor | None, target_length: int, batch_size: int,
                               out_dim: int = 3) -> torch.Tensor | None:
        """Pad the mask's last axis as the reference does and repeat it per head."""
        if attention_mask is None:
            return None
        if attention_mask.shape[-1] != target_length:
            if attention_mask.device.type == "mps":  # MPS cannot pad by more than the input size
                pad = attention_mask.new_zeros(attention_mask.shape[0], attention_mask.shape[1], target_length)
                attention_mask = torch.cat([attention_mask, pad], dim=2)
            else:  # the reference pads by target_length (not the remainder); kept for identical results
                attention_mask = F.pad(attention_mask, (0, target_length), value=0.0)
        if out_dim == 3:
            if attention_mask.shape[0] < batch_size * self.heads:
                attention_mask = attention_mask.repeat_interleave(self.heads, dim=0)
        elif out_dim == 4:
            attention_mask = attention_mask.unsqueeze(1).repeat_interleave(self.heads, dim=1)
        return attention_mask

    def norm_encoder_hidden_states(self, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("cross_attention_norm is not supported by vidiff's Attention (norm_cross is None)")


# ----------------------------------------------------------------------------------------------------------------
# Processors. Shared input/output plumbing; each processor differs only in how it computes softmax(qk^T)v.
# ----------------------------------------------------------------------------------------------------------------

def _flatten_input(attn: Attention, hidden_states: torch.Tensor):
    """(b, c, h, w) -> (b, h*w, c); returns the 3D states and the 4D shape to restore (or None)."""
    if hidden_states.ndim == 4:
        b, c, h, w = hidden_states.shape
        return hidden_states.view(b, c, h * w).transpose(1, 2), (b, c, h, w)
    return hidden_states, None


def _project_qkv(attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None):
    """Group norm, then q from the (normed) states and k, v from the context."""
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    query = attn.to_q(hidden_states)
    if encoder_hidden_states is None:
        encoder_hidden_states = hidden_states
    elif attn.norm_cross:
        encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
    return query, attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)


def _finish(attn: Attention, hidden_states: torch.Tensor, residual: torch.Tensor, shape4d) -> torch.Tensor:
    """Output projection, dropout, back to 4D, residual, rescale."""
    return _restore(attn, attn.to_out[1](attn.to_out[0](hidden_states)), residual, shape4d)


def _single_key(attn: Attention, context: torch.Tensor, batch: int, n_q: int, residual: torch.Tensor, shape4d) -> torch.Tensor:
    """Attention over a context of one token: the softmax of a single score is exactly 1, so every query's output is
    that token's value. ``to_out(to_v(context))`` once per context row, repeated for its queries: no query
    projection, no scores (SVD's image embedding is such a context, in every spatial and temporal block)."""
    out = attn.to_out[0](attn.to_v(context))  # b 1 out_dim (b: one row per context)
    out = out.expand(-1, batch // out.shape[0] * n_q, -1).reshape(batch, n_q, out.shape[-1])  # (b r) n_q out_dim
    return _restore(attn, attn.to_out[1](out), residual, shape4d)


def _restore(attn: Attention, hidden_states: torch.Tensor, residual: torch.Tensor, shape4d) -> torch.Tensor:
    """Back to 4D, residual, rescale."""
    if shape4d is not None:
        hidden_states = hidden_states.transpose(-1, -2).reshape(shape4d)
    if attn.residual_connection:
        hidden_states = add_(hidden_states, residual)
    return hidden_states / attn.rescale_output_factor if attn.rescale_output_factor != 1 else hidden_states


class AttnProcessor2_0:
    """Attention through ``torch.nn.functional.scaled_dot_product_attention`` (the default).

    Shares context (``shares_context``): given ``encoder_hidden_states`` whose batch is the hidden states' batch
    divided by ``r`` (one context per video, ``r`` frames each), it projects keys and values once per context and
    lets the ``r`` consecutive rows that share it attend as one longer query sequence: the same sums as repeating
    the context ``r`` times, with ``r`` times less key/value work."""

    shares_context = True

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args, **kwargs) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        hidden_states, shape4d = _flatten_input(attn, hidden_states)
        batch, n_q, _ = hidden_states.shape
        b, seq_len, _ = (hidden_states if encoder_hidden_states is None else encoder_hidden_states).shape  # b: batch / r
        if seq_len == 1 and encoder_hidden_states is not None and attention_mask is None and not torch.is_grad_enabled():
            # (with autograd on, the full path runs: to_q gets its gradient, zero up to rounding, as in the reference)
            return _single_key(attn, encoder_hidden_states, batch, n_q, residual, shape4d)
        if attention_mask is not None:  # (Attention.forward repeats a shared context when there is a mask)
            attention_mask = attn.prepare_attention_mask(attention_mask, seq_len, b)
            attention_mask = attention_mask.view(b, attn.heads, -1, attention_mask.shape[-1])  # b heads n_q n_k
        query, key, value = _project_qkv(attn, hidden_states, encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (t.view(b, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))  # b heads (r n) d
        out = sdpa(query, key, value, attn_mask=attention_mask)
        dtype = query.dtype
        del hidden_states, query, key, value  # freed before the output projection allocates (three maps fewer at the peak)
        out = out.transpose(1, 2).reshape(batch, n_q, attn.heads * head_dim).to(dtype)  # (b r) n (heads d)
        return _finish(attn, out, residual, shape4d)


def context_repeats(hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor) -> int:
    """How many consecutive rows of ``hidden_states`` share each row of ``encoder_hidden_states`` (1: one each).

    Video UNets pass one context per video, ``b n d``, for hidden states with frames (or pixels) folded into the
    batch, ``(b r) ...``: processors with ``shares_context`` use it as it is, the others get it repeated."""
    rows, contexts = hidden_states.shape[0], encoder_hidden_states.shape[0]
    if contexts == rows:
        return 1
    if contexts == 0 or rows % contexts:
        raise ValueError(
            f"attention: encoder_hidden_states has batch {contexts}, which does not divide the hidden states' batch "
            f"{rows}; pass one context per row, or one per group of consecutive rows (e.g. one per video of folded frames)."
        )
    return rows // contexts


class AttnProcessor:
    """Explicit attention: ``baddbmm`` scores and softmax via ``attn.get_attention_scores`` (honours upcasting)."""

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args, **kwargs) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        hidden_states, shape4d = _flatten_input(attn, hidden_states)
        b, seq_len, _ = (hidden_states if encoder_hidden_states is None else encoder_hidden_states).shape
        attention_mask = attn.prepare_attention_mask(attention_mask, seq_len, b)
        query, key, value = (attn.head_to_batch_dim(t) for t in _project_qkv(attn, hidden_states, encoder_hidden_states))
        probs = attn.get_attention_scores(query, key, attention_mask)  # (b heads) n_q n_k
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        return _finish(attn, out, residual, shape4d)


class SlicedAttnProcessor:
    """``AttnProcessor`` maths computed ``slice_size`` rows of the (batch * heads) axis at a time, to save memory."""

    def __init__(self, slice_size: int):
        self.slice_size = slice_size

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        residual = hidden_states
        hidden_states, shape4d = _flatten_input(attn, hidden_states)
        b, seq_len, _ = (hidden_states if encoder_hidden_states is None else encoder_hidden_states).shape
        attention_mask = attn.prepare_attention_mask(attention_mask, seq_len, b)
        query, key, value = (attn.head_to_batch_dim(t) for t in _project_qkv(attn, hidden_states, encoder_hidden_states))
        bh, n_q, head_dim = query.shape
        out = query.new_zeros(bh, n_q, value.shape[-1])
        for start in range(0, bh, self.slice_size):
            sl = slice(start, start + self.slice_size)
            mask = attention_mask[sl] if attention_mask is not None else None
            out[sl] = torch.bmm(attn.get_attention_scores(query[sl], key[sl], mask), value[sl])
        return _finish(attn, attn.batch_to_head_dim(out), residual, shape4d)


# Processors that compute plain (cross) attention; ``set_default_attn_processor`` only replaces these.
CROSS_ATTENTION_PROCESSORS = (AttnProcessor, AttnProcessor2_0, SlicedAttnProcessor)


class AttentionProcessorMixin:
    """Model-level processor management (same semantics as the reference's model methods)."""

    @property
    def attn_processors(self) -> dict[str, Any]:
        """``{"<module path>.processor": processor}`` for every attention layer, in module order."""
        return {f"{name}.processor": module.get_processor()
                for name, module in _named_attention_layers(self)}

    def set_attn_processor(self, processor) -> None:
        """Set one processor for every attention layer, or a dict keyed like ``attn_processors``."""
        layers = list(_named_attention_layers(self, hook="set_processor"))
        if isinstance(processor, dict):
            if len(processor) != len(layers):
                raise ValueError(
                    f"A dict of processors was passed, but the number of processors {len(processor)} does not match the "
                    f"number of attention layers: {len(layers)}. Please make sure to pass {len(layers)} processor classes.")
            missing = [f"{name}.processor" for name, _ in layers if f"{name}.processor" not in processor]
            if missing:
                raise ValueError(f"the processor dict lacks keys {missing[:3]}...; use the keys of `model.attn_processors`")
            for name, module in layers:
                module.set_processor(processor[f"{name}.processor"])
        else:
            for _, module in layers:
                module.set_processor(processor)

    def set_default_attn_processor(self) -> None:
        """Go back to the plain ``AttnProcessor`` everywhere (as the reference does)."""
        procs = self.attn_processors.values()
        if not all(isinstance(p, CROSS_ATTENTION_PROCESSORS) for p in procs):
            raise ValueError(f"Cannot call `set_default_attn_processor` when attention processors are of type "
                             f"{type(next(iter(procs))).__name__}")
        self.set_attn_processor(AttnProcessor())

    def set_attention_slice(self, slice_size: str | int | list[int] | None) -> None:
        """Sliced attention: "auto" (half the heads), "max" (one at a time), an int, or one value per layer."""
        layers = [m for _, m in _named_attention_layers(self, hook="set_attention_slice")]
        dims = [m.sliceable_head_dim for m in layers]
        if slice_size == "auto":
            sizes = [d // 2 for d in dims]
        elif slice_size == "max":
            sizes = [1] * len(dims)
        elif isinstance(slice_size, list):
            sizes = slice_size
        else:
            sizes = [slice_size] * len(dims)
        if len(sizes) != len(dims):
            raise ValueError(f"You have provided {len(sizes)} slice sizes, but the model has {len(dims)} attention "
                             f"layers. Make sure to match `len(slice_size)` to be {len(dims)}.")
        for size, dim in zip(sizes, dims):
            if size is not None and size > dim:
                raise ValueError(f"size {size} has to be smaller or equal to {dim}.")
        for module, size in zip(layers, sizes):
            module.set_attention_slice(size)


def _named_attention_layers(model: nn.Module, hook: str = "get_processor"):
    """Depth-first (name, module) for submodules exposing ``hook``, like the reference's recursive walk."""

    def walk(prefix: str, module: nn.Module):
        if hasattr(module, hook):
            yield prefix, module
        for sub, child in module.named_children():
            yield from walk(f"{prefix}.{sub}", child)

    for name, child in model.named_children():
        yield from walk(name, child)
