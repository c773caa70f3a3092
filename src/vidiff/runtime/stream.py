"""Weight streaming: a model's memory-mapped weights are resident in the process only while their layer runs.

vidiff reads safetensors weights memory-mapped, without a copy: a parameter's values are the file's pages in the
kernel's page cache, mapped into the process. Once every layer has run, all of them count in the process's resident
memory, so a run's peak RSS holds the whole checkpoint (5.7 GB for SVD's float32 UNet) on top of the activations.
:func:`enable_weight_streaming` hooks every layer that has parameters: as layers finish, their weights' pages are
handed back (``madvise(MADV_DONTNEED)``), in batches of :data:`BATCH_BYTES`, and all of them after the model's call.
They leave the process's resident set and stay in the page cache, from which the next call maps them back without
a copy (minor faults). For SVD's 5.7 GB UNet on an Intel Xeon, 2 cores, that is 0.3-0.4 s of a 5-7 s call
handing pages back and about 0.2 s mapping them in again. The page cache is memory the kernel may reclaim: under
memory pressure it drops those pages and reads them from the file again when they are next used, so a run needs
little more resident memory than its activations and a batch of layers.

Only pages that still hold the file's contents are handed back. A weight written in place after loading (a fused
LoRA, an edit through ``.data``) has private copies of the pages it changed, which ``MADV_DONTNEED`` would throw
away; ``/proc/self/pagemap`` tells the two apart, and such pages are kept. Weights that are no file's pages (cast
to another dtype at load, built in memory, on an accelerator) are ordinary memory and are left alone, as are the
oneDNN-reordered convolution weights that :mod:`vidiff.runtime.conv` keeps (``conv.PACK_WEIGHTS = False`` drops
those too, at some speed). The results are the same to the bit: the same values are read. Linux only, and not
under ``torch.compile``: a compiled graph runs no Python hooks (a compiled model is refused with a warning).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import weakref
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from .memory import libc

logger = logging.getLogger("vidiff")

MADV_DONTNEED = 4
# The layers' weights are handed back in batches of at least this many bytes (and all of them after the model's
# call): one pass over neighbouring weights merges them into few long ranges, where one per layer took about
# 0.6 s of a 7 s svd-full UNet call in system calls and bookkeeping, and made the mid-size UNets' calls 1.4x as
# long. A batch bounds what streaming leaves resident at any time beyond the running layer.
BATCH_BYTES = 64 << 20
_PRESENT, _SWAPPED, _FILE = 1 << 63, 1 << 62, 1 << 61  # /proc/<pid>/pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst)


@functools.lru_cache(maxsize=None)
def _page_size() -> int:
    return os.sysconf("SC_PAGE_SIZE")


@functools.lru_cache(maxsize=None)
def _madvise():
    madvise = libc().madvise
    madvise.argtypes, madvise.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    return madvise


def supported() -> bool:
    """Whether this system can stream weights (Linux's C library, and a readable ``/proc/self/pagemap``)."""
    return libc() is not None and os.access("/proc/self/pagemap", os.R_OK)


class FileMapping(NamedTuple):
    start: int  # addresses
    end: int
    offset: int  # where in the file the mapping starts
    device: tuple[int, int]  # (major, minor) of the file's device
    inode: int
    path: str


def file_mappings() -> list[FileMapping]:
    """This process's mappings of regular files, from ``/proc/self/maps``."""
    spans = []
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[4] != "0" and fields[5].startswith("/"):
                start, end = fields[0].split("-")
                major, minor = fields[3].split(":")
                spans.append(FileMapping(int(start, 16), int(end, 16), int(fields[2], 16), (int(major, 16), int(minor, 16)),
                                         int(fields[4]), fields[5].rstrip("\n")))
    return spans


def _pages(t: torch.Tensor) -> tuple[int, int] | None:
    """First and one-past-last page of the memory a CPU tensor's elements span (not its whole storage: a
    checkpoint's tensors may be views into one mapped file), or None for an empty or non-CPU one."""
    if t.device.type != "cpu" or t.layout != torch.strided or t.is_quantized or t.numel() == 0:
        return None
    extent = (1 + sum((n - 1) * abs(st) for n, st in zip(t.shape, t.stride()))) * t.element_size()
    page, start = _page_size(), t.data_ptr()
    return start // page, -(-(start + extent) // page)


def _mapping(pages: tuple[int, int], spans: list[FileMapping]) -> FileMapping | None:
    page = _page_size()
    return next((m for m in spans if m.start <= pages[0] * page and pages[1] * page <= m.end), None)


def _inside(pages: tuple[int, int], spans: list[FileMapping]) -> bool:
    return _mapping(pages, spans) is not None


def mapped_bytes(tensors: Iterable[torch.Tensor], spans: list[FileMapping] | None = None) -> int:
    """How many bytes of these tensors' memory are pages of a mapped file (what streaming can hand back)."""
    spans = file_mappings() if spans is None else spans
    seen = {p for t in tensors if (p := _pages(t)) is not None and _inside(p, spans)}
    return sum(e - s for s, e in _merge(seen)) * _page_size()


def _merge(ranges) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for s, e in sorted(ranges):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


class Pagemap:
    """This process's ``/proc/self/pagemap``, kept open."""

    def __init__(self) -> None:
        self.fd = os.open("/proc/self/pagemap", os.O_RDONLY)

    def entries(self, first: int, end: int) -> np.ndarray:
        return np.frombuffer(os.pread(self.fd, (end - first) * 8, first * 8), dtype=np.uint64)

    def close(self) -> None:
        os.close(self.fd)


def release(tensors: Iterable[torch.Tensor], pagemap: Pagemap, mapped=None) -> int:
    """Hand back the resident, unmodified file pages of these tensors' memory; returns the bytes handed back.

    A page is handed back when it is present and file-backed in the pagemap, i.e. holds a file's contents; pages
    written in place (private copies), swapped out or not present are left as they are. ``mapped`` (a function of a
    tensor's page range) filters out tensors outside file mappings first, which saves reading their entries."""
    page, madvise, done = _page_size(), _madvise(), 0
    for first, end in _merge(p for t in tensors if (p := _pages(t)) is not None and (mapped is None or mapped(p))):
        flags = pagemap.entries(first, end)
        ok = (flags & np.uint64(_PRESENT | _SWAPPED | _FILE)) == np.uint64(_PRESENT | _FILE)
        if not ok.any():
            continue
        edges = np.flatnonzero(np.diff(np.concatenate(([0], ok.view(np.int8), [0]))))  # starts and ends of runs of ok pages
        for s, e in zip(edges[::2].tolist(), edges[1::2].tolist()):
            if madvise((first + s) * page, (e - s) * page, MADV_DONTNEED) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"madvise(MADV_DONTNEED) failed: {os.strerror(err)}")
            done += (e - s) * page
    return done


def _unmodified(pagemap: Pagemap, pages: tuple[int, int]) -> bool:
    """No page in the range is a private copy (written in place) or swapped out."""
    flags = pagemap.entries(*pages)
    present_anon = (flags & np.uint64(_PRESENT | _FILE)) == np.uint64(_PRESENT)
    return not (present_anon.any() or (flags & np.uint64(_SWAPPED)).any())


def remap(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Those of ``tensors`` that are unmodified pages of a mapped file, mapped again from their file: the same
    values without a copy, and independent of the originals (a private mapping of its own: writing either leaves
    the other as it was). The others (and everything off Linux) are left out; callers copy those.

    A tensor qualifies when it lies in one file mapping, is contiguous, no page of it was written in place or
    swapped (``/proc/self/pagemap``), the path still names the mapped file (device and inode) and its offset in
    the file is a multiple of its element size."""
    if not supported():
        return {}
    spans, pagemap, files, out = file_mappings(), Pagemap(), {}, {}
    try:
        for key, t in tensors.items():
            pages = _pages(t)
            m = None if pages is None or not t.is_contiguous() else _mapping(pages, spans)
            if m is None or not _unmodified(pagemap, pages):
                continue
            offset = m.offset + t.data_ptr() - m.start
            if offset % t.element_size():
                continue
            if m.path not in files:
                try:
                    st = os.stat(m.path)
                except OSError:
                    st = None
                same = st is not None and st.st_ino == m.inode and (os.major(st.st_dev), os.minor(st.st_dev)) == m.device
                files[m.path] = torch.UntypedStorage.from_file(m.path, shared=False, nbytes=st.st_size) if same else None
            storage = files[m.path]
            if storage is not None and offset + t.numel() * t.element_size() <= storage.nbytes():
                out[key] = torch.empty(0, dtype=t.dtype).set_(storage, offset // t.element_size(), t.shape, t.stride())
    finally:
        pagemap.close()
    return out


class WeightStreaming:
    """The hooks :func:`enable_weight_streaming` installed on one model; :meth:`remove` takes them off.

    Whether a tensor lies in a file mapping is looked up in ``/proc/self/maps`` once per page range (a weight moved
    or replaced has new addresses and is looked up again); the pagemap check in :func:`release` is what keeps
    changed pages, so a stale answer (a file unmapped, its addresses reused) can hand back nothing but file pages."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.released = 0  # bytes handed back so far (pages mapped back in count again when handed back again)
        self.pagemap = Pagemap()
        self._verdicts: dict[tuple[int, int], bool] = {}
        self._pending: list[nn.Module] = []  # layers that ran since the last release, and their weights' bytes
        self._pending_bytes = 0
        # after each module with weights of its own or in its direct children: those weights (a parent may read a
        # child's weight without calling it, as GEGLU's column-blocked product does); after the model: all of them
        self._sizes: dict[int, int] = {}
        _STREAMING[model] = self
        self.handles = [model.register_forward_hook(_transparent(self._after_model))]
        for layer in model.modules():
            size = sum(t.numel() * t.element_size() for t in _layer_tensors(layer))
            if layer is not model and size:
                self._sizes[id(layer)] = size
                self.handles.append(layer.register_forward_hook(_transparent(self._after_layer)))

    def _mapped(self, pages: tuple[int, int]) -> bool:
        verdict = self._verdicts.get(pages)
        if verdict is None:
            verdict = self._verdicts[pages] = _inside(pages, file_mappings())
        return verdict

    def _after_layer(self, layer: nn.Module, args, output) -> None:  # returns None: a returned value would replace the output
        if torch.compiler.is_compiling():
            return
        self._pending.append(layer)
        self._pending_bytes += self._sizes.get(id(layer), 0)
        if self._pending_bytes >= BATCH_BYTES:
            self.flush()

    def flush(self) -> int:
        """Hand back the weights of the layers that ran since the last release; returns the bytes handed back."""
        tensors = [t for layer in self._pending for t in _layer_tensors(layer)]
        self._pending, self._pending_bytes = [], 0
        done = release(tensors, self.pagemap, self._mapped)
        self.released += done
        return done

    def _after_model(self, model: nn.Module, args, output) -> None:
        if not torch.compiler.is_compiling():
            self.release_all()

    def release_all(self) -> int:
        """Hand back every unmodified mapped page of the model's weights now; returns the bytes handed back."""
        self._pending, self._pending_bytes = [], 0
        done = release(_tensors(self.model), self.pagemap, self._mapped)
        self.released += done
        return done

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
        self.pagemap.close()
        if _STREAMING.get(self.model) is self:
            del _STREAMING[self.model]


_STREAMING: weakref.WeakKeyDictionary[nn.Module, WeightStreaming] = weakref.WeakKeyDictionary()  # model -> its hooks


def _transparent(hook):
    """Mark a hook as one that changes no input or output: :func:`vidiff.runtime.chunking.plain_linear` then still
    lets a parent use the layer's weight directly (a hook it cannot see through makes it call the layer)."""
    @functools.wraps(hook)
    def call(*args):
        return hook(*args)

    call.vidiff_transparent = True
    return call


def _tensors(module: nn.Module, recurse: bool = True) -> list[torch.Tensor]:
    return [t for t in (*module.parameters(recurse=recurse), *module.buffers(recurse=recurse)) if t is not None]


def _layer_tensors(layer: nn.Module) -> list[torch.Tensor]:
    """A layer's own weights and its direct children's (what its hook hands back)."""
    return _tensors(layer, recurse=False) + [t for c in layer.children() for t in _tensors(c, recurse=False)]


def enable_weight_streaming(model: nn.Module) -> WeightStreaming | None:
    """Stream ``model``'s memory-mapped weights (see the module docstring); returns the hooks, or None when this
    system cannot (not Linux: a warning says so) or the model already streams. Logs how much of the weights is
    file-backed; none of it (weights cast at load, or moved) is worth a warning, as streaming then saves nothing."""
    if not supported():
        logger.warning("vidiff: weight streaming needs Linux (madvise and /proc/self/pagemap); the weights stay resident.")
        return None
    if isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
        logger.warning(f"vidiff: {type(model._orig_mod).__name__} is compiled (torch.compile), and a compiled graph runs "
                       "no Python hooks, so its weights cannot stream; use weight streaming or torch.compile, not both.")
        return None
    if model in _STREAMING:
        return None
    tensors = _tensors(model)
    total = sum(t.numel() * t.element_size() for t in tensors if t.device.type == "cpu")
    mapped = mapped_bytes(tensors)
    name = type(model).__name__
    if total and not mapped:
        logger.warning(f"vidiff: none of {name}'s weights are memory-mapped from a file (cast to another dtype at load, "
                       "or built in memory), so streaming them saves no memory.")
    else:
        logger.info(f"vidiff: streaming {name}'s weights: {mapped / 2**20:.0f} of {total / 2**20:.0f} MiB are mapped from files.")
    streaming = WeightStreaming(model)
    streaming.release_all()
    return streaming
