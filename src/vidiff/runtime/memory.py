"""Free memory back to the system between a pipeline's stages.

glibc's malloc keeps the memory of freed tensors below 32 MiB in its heap and reuses it for later allocations,
but a heap fragmented by one stage (the denoiser's activations) does not fit the next stage's tensors (the VAE's
full-resolution maps) well: the decoder then grows the process on top of the denoiser's leftovers (SVD at 256x256:
about 250 MB retained after the last step, on which decoding added another 250 MB). :func:`release_free_memory`
asks malloc to hand every free page back (``malloc_trim(0)``: it changes no setting and frees nothing in use), so
that each stage starts from what is really alive. The pipelines call it before the denoising loop and before each
decode chunk, and the VAE decoders before each up block whose input is large (:func:`release_free_memory_before`):
each block works on maps 4x the size of the last block's, which the holes that block left do not fit. Elsewhere
than glibc (macOS, musl, Windows) it does nothing.

The layers also keep fewer maps alive by working in place on intermediates they own when autograd does not record
them: :func:`act_` (SiLU after a norm) and :func:`add_` (a residual or embedding sum), the same values.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

import torch
import torch.nn.functional as F
from torch import nn


@functools.lru_cache(maxsize=None)
def libc() -> ctypes.CDLL | None:
    """The C library on Linux (errno kept for ``ctypes.get_errno``), or None elsewhere or when it cannot be loaded."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


@functools.lru_cache(maxsize=None)
def _malloc_trim():
    try:
        trim = libc().malloc_trim
    except AttributeError:  # no libc, or not glibc
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_free_memory() -> bool:
    """Return the allocator's free pages to the system; True when glibc's ``malloc_trim`` ran."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


LARGE_BYTES = 4 << 20  # inputs below this: the stage's maps are small enough that a trim would cost more than it frees


def release_free_memory_before(x: torch.Tensor) -> bool:
    """:func:`release_free_memory` ahead of a stage whose input ``x`` is a CPU tensor of ``LARGE_BYTES`` or more."""
    if x.device.type != "cpu" or x.numel() * x.element_size() < LARGE_BYTES or torch.compiler.is_compiling():
        return False
    return release_free_memory()


# ---------------------------------------------------------------------------------------------- in place

_IN_PLACE = {nn.SiLU: F.silu, nn.Mish: F.mish, nn.ReLU: F.relu}


def untracked(x: torch.Tensor) -> bool:
    """True when autograd does not record operations on ``x`` (no grad mode, or ``x`` needs no gradient)."""
    return not (torch.is_grad_enabled() and x.requires_grad)


def act_(act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``act(x)`` for an intermediate ``x`` the caller owns: in place when autograd does not record it and the
    activation has an in-place form (SiLU, Mish, ReLU): the same values, one map fewer alive."""
    fn = _IN_PLACE.get(type(act))
    return fn(x, inplace=True) if fn is not None and untracked(x) else act(x)


def add_(x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``x + other`` for an intermediate ``x`` the caller owns: in place when autograd does not record it and the
    sum has ``x``'s shape and dtype (the same values: IEEE addition commutes)."""
    if untracked(x) and untracked(other) and other.dtype == x.dtype and other.dim() <= x.dim() \
            and all(o in (1, n) for o, n in zip(reversed(other.shape), reversed(x.shape))):
        return x.add_(other)
    return x + other
