"""Free memory back to the system between a pipeline's stages.

glibc's malloc keeps the memory of freed tensors below 32 MiB in its heap and reuses it for later allocations,
but a heap fragmented by one stage (the denoiser's activations) does not fit the next stage's tensors (the VAE's
full-resolution maps) well: the decoder then grows the process on top of the denoiser's leftovers (SVD at 256x256:
about 250 MB retained after the last step, on which decoding added another 250 MB). :func:`release_free_memory`
asks malloc to hand every free page back (``malloc_trim(0)``: it changes no setting and frees nothing in use), so
that each stage starts from what is really alive. The pipelines call it before decoding. Elsewhere than glibc
(macOS, musl, Windows) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys


@functools.lru_cache(maxsize=None)
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
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
