"""Reading and writing state dicts: safetensors (single or sharded with an index), pickles on request.

``load_state_dict`` takes the files :func:`select_weight_files` chose (an ``.index.json`` stands for its
shards) and returns one ``{key: tensor}`` dict; ``read_tensor_shapes`` reads only the headers so that keys
and shapes can be checked before any tensor data is read. ``save_state_dict`` writes exactly what diffusers'
``save_pretrained`` writes, each file through a temporary name and a rename.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import CheckpointError, CheckpointNotFoundError
from .filenames import (  # noqa: F401  (select_weight_files is part of this module's API)
    DIFFUSERS_PREFIX,
    PICKLE,
    SAFETENSORS,
    index_name,
    is_index_file,
    select_weight_files,
    shard_pattern,
    shard_regex,
    weights_name,
)

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike
DtypeSpec = torch.dtype | Mapping[str, torch.dtype] | None

_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": getattr(torch, "float8_e4m3fn", None), "F8_E5M2": getattr(torch, "float8_e5m2", None),
}


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int, ...]
    dtype: torch.dtype | None  # None: a dtype torch cannot name


# ---------------------------------------------------------------- files and indexes
def shard_names_from_index(index_path: PathLike) -> list[str]:
    """The shard file names an ``.index.json`` points to (sorted, validated as plain names)."""
    return sorted(set(_read_index(Path(index_path)).values()))


def _read_index(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        weight_map = data["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} is not a valid shard index (a JSON object with a 'weight_map'): {e}{_diagnose(path)}") from None
    for shard in set(weight_map.values()):
        if not isinstance(shard, str) or os.path.basename(shard) != shard or shard in ("", ".", ".."):
            raise CheckpointError(f"{path}: shard name {shard!r} is not a plain file name; an index may only name files beside it")
    return weight_map


def expand_checkpoint_files(paths: PathLike | Iterable[PathLike]) -> tuple[list[Path], dict[str, str] | None]:
    """Replace an ``.index.json`` by its shards (found beside it). Returns (weight files, the index's weight_map)."""
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
    indexes = [p for p in paths if is_index_file(p.name)]
    if len(indexes) > 1:
        raise CheckpointError(f"got several shard indexes {[str(p) for p in indexes]}; pass one checkpoint at a time")
    if not indexes:
        _require_files(paths)
        return paths, None
    index = indexes[0]
    _require_files([index])
    weight_map = _read_index(index)
    shards = [index.parent / name for name in sorted(set(weight_map.values()))]
    given = {p.resolve() for p in paths if p != index}
    extra = given - {s.resolve() for s in shards}
    if extra:
        raise CheckpointError(f"{sorted(map(str, extra))} are not listed in the shard index {index}")
    missing = [s.name for s in shards if not s.is_file()]
    if missing:
        raise CheckpointNotFoundError(f"shard index {index} names files that are missing beside it: {missing}")
    return shards, weight_map


def _require_files(paths: list[Path]) -> None:
    for p in paths:
        if not p.is_file():
            raise CheckpointNotFoundError(f"weight file {p} does not exist")


# ---------------------------------------------------------------- reading
def _diagnose(path: Path) -> str:
    """A hint on why a weight file cannot be parsed (empty, HTML page, git-lfs pointer, truncated)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8 + 4096)
    except OSError:
        return ""
    if size == 0:
        return " (the file is empty: an interrupted download or copy; fetch it again)"
    text = head[:512].lstrip().lower()
    if text.startswith(b"version https://git-lfs"):
        return " (it is a git-lfs pointer, not the weights: run `git lfs pull` in the cloned repo)"
    if text.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")) or b"<html" in text:
        return " (it is an HTML page, not weights: a login or error page was saved in place of the file; download it again)"
    if path.suffix == ".safetensors" and len(head) >= 8:
        header_len = struct.unpack("<Q", head[:8])[0]
        if 8 + header_len > size:
            return f" (truncated or not safetensors: the header claims {header_len} bytes but the file holds {size})"
        end = _safetensors_data_end(path, header_len)
        if end is not None and 8 + header_len + end > size:
            return f" (truncated: the header describes {8 + header_len + end} bytes but the file holds {size}; download it again)"
    return ""


def _safetensors_data_end(path: Path, header_len: int) -> int | None:
    try:
        with open(path, "rb") as f:
            f.seek(8)
            header = json.loads(f.read(header_len))
        return max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def _open_safetensors(path: Path, device: str = "cpu"):
    from safetensors import safe_open

    try:
        return safe_open(str(path), framework="pt", device=device)
    except Exception as e:  # SafetensorError has no importable base class in every version
        raise CheckpointError(f"cannot read safetensors file {path}: {e}{_diagnose(path)}") from None


def _load_pickle(path: Path, device: str, allow_pickle: bool) -> dict[str, torch.Tensor]:
    if not allow_pickle:
        raise CheckpointError(
            f"{path} is a pickle; vidiff does not unpickle by default because a pickle can run code when loaded. "
            "Pass allow_pickle=True to load it with torch.load(weights_only=True), or convert it to safetensors."
        )
    mmap = zipfile.is_zipfile(path) and device != "meta"
    try:
        data = torch.load(path, map_location=device, weights_only=True, mmap=mmap)
    except Exception as e:
        raise CheckpointError(f"cannot read pickle weights {path} with torch.load(weights_only=True): {e}{_diagnose(path)}") from None
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"{path} does not hold a flat {{name: tensor}} state dict (got {type(data).__name__})")
    return dict(data)


def read_tensor_shapes(paths: PathLike | Iterable[PathLike], allow_pickle: bool = False) -> dict[str, TensorSpec]:
    """Key -> (shape, dtype) of a checkpoint, from the safetensors headers only (pickles are mapped lazily)."""
    files, _ = expand_checkpoint_files(paths)
    specs: dict[str, TensorSpec] = {}
    for path in files:
        if path.suffix == ".safetensors":
            with _open_safetensors(path) as f:
                part = {k: _spec(f.get_slice(k)) for k in f.keys()}
        else:
            part = {k: TensorSpec(tuple(t.shape), t.dtype) for k, t in _load_pickle(path, "cpu", allow_pickle).items()}
        _merge(specs, part, path)
    return specs


def _spec(slice_) -> TensorSpec:
    return TensorSpec(tuple(slice_.get_shape()), _ST_DTYPES.get(slice_.get_dtype()))


def _merge(into: dict, part: Mapping, path: Path) -> None:
    dup = into.keys() & part.keys()
    if dup:
        raise CheckpointError(f"{path} repeats keys already read from another shard: {sorted(dup)[:10]}")
    into.update(part)


def _target(key: str, t_dtype: torch.dtype, dtype: DtypeSpec) -> torch.dtype | None:
    if dtype is None:
        return None
    if isinstance(dtype, torch.dtype):
        return dtype if t_dtype.is_floating_point else None
    return dtype.get(key)


def load_state_dict(
    paths: PathLike | Iterable[PathLike],
    dtype: DtypeSpec = None,
    device: str | torch.device = "cpu",
    *,
    allow_pickle: bool = False,
) -> dict[str, torch.Tensor]:
    """Read a checkpoint (one file, or an ``.index.json`` with its shards) into one state dict.

    ``dtype``: a torch.dtype casts the floating tensors to it (integer/bool tensors keep theirs); a mapping
    ``{key: dtype}`` casts the listed keys (how ``from_pretrained`` follows the model's dtypes). Each tensor
    is cast as it is read and, on Linux, the pages it was read from are handed back (:class:`_Cast`), so peak
    memory stays near one copy of the result. Pickle files (``.bin``) need
    ``allow_pickle=True`` and are read with ``torch.load(weights_only=True)``. Unreadable files raise
    :class:`CheckpointError` naming the file and the likely cause.
    """
    files, weight_map = expand_checkpoint_files(paths)
    device = str(device)
    state: dict[str, torch.Tensor] = {}
    cast = _Cast(release=device == "cpu" and dtype is not None)
    try:
        for path in files:
            part: dict[str, torch.Tensor] = {}
            if path.suffix == ".safetensors":
                with _open_safetensors(path, device) as f:
                    for key in f.keys():
                        part[key] = cast(f.get_tensor(key), _target(key, _st_dtype(f, key), dtype))
            else:
                for key, t in _load_pickle(path, device, allow_pickle).items():
                    part[key] = cast(t, _target(key, t.dtype, dtype))
            _merge(state, part, path)
    finally:
        cast.close()
    if weight_map is not None and state.keys() != weight_map.keys():
        missing, extra = sorted(weight_map.keys() - state.keys()), sorted(state.keys() - weight_map.keys())
        raise CheckpointError(f"shards do not match their index: keys listed but absent {missing[:10]}, keys present but unlisted {extra[:10]}")
    return state


def _st_dtype(f, key: str) -> torch.dtype:
    return _ST_DTYPES.get(f.get_slice(key).get_dtype()) or torch.uint8


def _cast(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return t if dtype is None or t.dtype == dtype else t.to(dtype)


class _Cast:
    """:func:`_cast`, handing the source's memory-mapped pages back once it is cast (CPU, Linux). The files stay mapped
    until the load ends, and every page the casts read would otherwise stay resident until then: a float32 SVD UNet
    loaded as bfloat16 peaked at 9.3 GB (5.7 GB of float32 pages, 2.9 GB of casts), as in the reference."""

    def __init__(self, release: bool) -> None:
        from ..runtime import stream

        self.stream = stream
        self.pagemap = stream.Pagemap() if release and stream.supported() else None

    def __call__(self, t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
        out = _cast(t, dtype)
        if out is not t and self.pagemap is not None:
            self.stream.release([t], self.pagemap)  # present, unmodified file pages only: nothing else is touched
        return out

    def close(self) -> None:
        if self.pagemap is not None:
            self.pagemap.close()


# ---------------------------------------------------------------- writing
def save_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    folder: PathLike,
    prefix: str = DIFFUSERS_PREFIX,
    variant: str | None = None,
    max_shard_size: int | str | None = None,
    safe_serialization: bool = True,
) -> list[Path]:
    """Write a state dict as diffusers does: one file, or shards + ``.index.json`` when it exceeds
    ``max_shard_size`` (bytes or a string such as ``"10GB"``, ``"5MB"``; None: never shard).

    Files are written under a temporary name and renamed into place; weight files of the same prefix,
    variant and format left by an earlier save (other shard counts, a stale index or single file) are
    removed afterwards so the folder holds one unambiguous checkpoint. Returns the paths written.
    """
    from huggingface_hub import split_torch_state_dict_into_shards

    folder = Path(folder)
    if folder.is_file():
        raise CheckpointError(f"{folder} is a file; weights are saved into a folder")
    folder.mkdir(parents=True, exist_ok=True)
    ext = SAFETENSORS if safe_serialization else PICKLE
    split = split_torch_state_dict_into_shards(
        dict(state_dict), filename_pattern=shard_pattern(prefix, ext, variant), max_shard_size=max_shard_size or 2**62
    )
    written = []
    for filename, keys in split.filename_to_tensors.items():
        shard = {k: state_dict[k].detach().contiguous().cpu() for k in keys}
        written.append(_atomic_write(folder / filename, lambda tmp, s=shard: _write_tensors(s, tmp, safe_serialization)))
    if split.is_sharded:
        index = {"metadata": dict(split.metadata), "weight_map": dict(split.tensor_to_filename)}
        text = json.dumps(index, indent=2, sort_keys=True) + "\n"
        written.append(_atomic_write(folder / index_name(prefix, ext, variant), lambda tmp: tmp.write_text(text, encoding="utf-8")))
    _remove_stale(folder, prefix, ext, variant, keep={p.name for p in written})
    return written


def _write_tensors(tensors: dict[str, torch.Tensor], path: Path, safe: bool) -> None:
    if safe:
        from safetensors.torch import save_file

        save_file(tensors, str(path), metadata={"format": "pt"})
    else:
        torch.save(tensors, path)


def _atomic_write(path: Path, write) -> Path:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _remove_stale(folder: Path, prefix: str, ext: str, variant: str | None, keep: set[str]) -> None:
    stale_names = {weights_name(prefix, ext, variant), index_name(prefix, ext, variant)}
    shard_re = shard_regex(prefix, ext, variant)
    for p in folder.iterdir():
        if p.name not in keep and p.is_file() and (p.name in stale_names or shard_re.fullmatch(p.name)):
            logger.debug("removing %s left by an earlier save", p)
            p.unlink()
