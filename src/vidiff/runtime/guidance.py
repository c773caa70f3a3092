"""Guidance batches: a large [uncond, cond] denoiser call runs as two half-batch calls.

Classifier-free guidance doubles the denoiser's batch, and with it every activation of the forward. Once the
batch is large (the svd-mid-256 bench case: 2 x 8 frames of 64x64 latents, activations of 16 MiB per tensor at
the outer blocks), :func:`run_denoiser` calls the model on the unconditional and the conditional half in turn and stacks
the two outputs: each sample's arithmetic is unchanged (the blocks act on each batch row alone; differences
around 1e-6 from the matrix-product kernels' blocking), the activations' peak halves, and at that size a call's
fixed overhead is negligible (svd-mid-256 step: no slower). Small calls (fewer than
:data:`SPLIT_MIN_POSITIONS` latent positions, batch x frames x height x width) run as one batch, as before.
Set ``vidiff.runtime.guidance.SPLIT_MIN_POSITIONS`` to 0 to always split, or to ``None`` to never split.

Inside a guided call the two halves share their latents: the layers a UNet runs before the text first enters (the
ModelScope and I2VGen-XL UNets' ``conv_in`` + ``transformer_in``, a sixth of a t2v-mid step) get the same rows
twice. :func:`once_for_equal_halves` computes such a prefix on one half and stacks it twice.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

SPLIT_MIN_POSITIONS: int | None = 1 << 14  # e.g. 2 x 8 frames x 32 x 32 latents


def split_batch(model: Any, sample: torch.Tensor, guided: bool) -> bool:
    """Whether :func:`run_denoiser` runs this guidance batch as two halves."""
    channels = getattr(getattr(model, "config", None), "in_channels", None)
    if not guided or SPLIT_MIN_POSITIONS is None or not channels or sample.shape[0] % 2:
        return False
    return sample.numel() // channels >= SPLIT_MIN_POSITIONS


def once_for_equal_halves(fn: Callable[..., torch.Tensor], *tensors: torch.Tensor) -> torch.Tensor:
    """``fn(*tensors)`` for a ``fn`` that acts on each batch row alone and returns rows in batch order (``b ...`` or
    ``(b f) ...``). When every tensor's batch is two equal halves (a guidance batch [uncond, cond] before the text
    enters), ``fn`` runs on the first halves and its output is stacked twice: the same rows for half the work
    (up to the kernels' blocking at another batch size). Under torch.compile ``fn`` runs on the whole batch."""
    n = tensors[0].shape[0]
    if torch.compiler.is_compiling() or n % 2 or any(t.shape[0] != n or not torch.equal(t[: n // 2], t[n // 2:]) for t in tensors):
        return fn(*tensors)
    half = fn(*(t[: n // 2] for t in tensors))
    return torch.cat([half, half])


def run_denoiser(model: Any, sample: torch.Tensor, *args, guided: bool = False, **kwargs) -> torch.Tensor:
    """``model(sample, *args, **kwargs, return_dict=False)[0]``; with ``guided`` (sample = [uncond, cond]) and a
    large batch, as two calls on the halves of every argument whose rows follow the sample's (tensors, or tuples,
    lists and dicts of them): a first axis of the sample's batch, or a multiple of it (per-frame text, (2 b f) rows
    laid out [uncond videos' frames, cond videos' frames])."""
    if not split_batch(model, sample, guided):
        return model(sample, *args, return_dict=False, **kwargs)[0]
    n = sample.shape[0]
    halves = [_half(sample, n, part) for part in (0, 1)]
    outs = [model(halves[p], *_half(args, n, p), return_dict=False, **_half(kwargs, n, p))[0] for p in (0, 1)]
    return torch.cat(outs)


def _half(value: Any, n: int, part: int) -> Any:
    """The ``part``-th half (0: uncond, 1: cond) of every tensor in ``value`` whose first axis has k * ``n`` rows."""
    if isinstance(value, torch.Tensor):
        rows = value.shape[0] if value.dim() else 0
        if not rows or rows % n:
            return value
        return value[part * (rows // 2):(part + 1) * (rows // 2)]
    if isinstance(value, (tuple, list)):
        return type(value)(_half(v, n, part) for v in value)
    if isinstance(value, dict):
        return {k: _half(v, n, part) for k, v in value.items()}
    return value
