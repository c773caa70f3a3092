"""From a folder or hub id to a loaded module: pick the weight files, check keys, assign the tensors.

The module is built on the meta device by the caller; :func:`load_into_model` checks the checkpoint's
keys and shapes against it from the file headers (before reading any tensor data), reads each tensor
once, casting it to its final dtype as it is read, and assigns it (``load_state_dict(assign=True)``):
peak memory is one copy of the weights, and nothing is randomly initialised.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from . import hub
from .errors import CheckpointError, CheckpointNotFoundError
from .filenames import DIFFUSERS_PREFIX, is_index_file, select_weight_files
from .weights import TensorSpec, load_state_dict, read_tensor_shapes, shard_names_from_index

logger = logging.getLogger(__name__)

HUB_KWARGS = ("revision", "cache_dir", "local_files_only", "token", "force_download")


def resolve_weight_files(
    name_or_path: str | os.PathLike,
    subfolder: str | None = None,
    *,
    prefix: str = DIFFUSERS_PREFIX,
    variant: str | None = None,
    use_safetensors: bool | None = None,
    allow_pickle: bool = False,
    **hub_kwargs,
) -> list[Path]:
    """Local paths of the weight files to load: ``[file]`` or ``[index, shard, ...]`` (downloaded if needed).

    ``hub_kwargs``: revision, cache_dir, local_files_only, token, force_download. A shard set is taken from
    its index's ``weight_map``, so exactly the shards it names are fetched.
    """
    names, where = _folder_file_names(name_or_path, subfolder, hub_kwargs)
    chosen = select_weight_files(names, prefix, variant, use_safetensors, allow_pickle, where=where)
    first = hub.resolve_file(name_or_path, chosen[0], subfolder, **hub_kwargs)
    if not is_index_file(chosen[0]):
        return [first]
    shards = shard_names_from_index(first)
    return [first] + [hub.resolve_file(name_or_path, s, subfolder, **hub_kwargs) for s in shards]


def _folder_file_names(name_or_path, subfolder: str | None, hub_kwargs: dict) -> tuple[list[str], str]:
    """Names of the files directly in the model folder (local or hub listing), and how to name the folder."""
    folder = hub.local_folder(name_or_path)
    if folder is not None:
        base = folder / subfolder if subfolder else folder
        if not base.is_dir():
            subs = sorted(p.name for p in folder.iterdir() if p.is_dir())
            raise CheckpointNotFoundError(f"{folder} has no subfolder {subfolder!r}; its subfolders are {subs}")
        return [p.name for p in base.iterdir() if p.is_file()], str(base)
    files = hub.list_repo_files_cached(name_or_path, **hub_kwargs)
    head = f"{subfolder.strip('/')}/" if subfolder else ""
    names = [f[len(head):] for f in files if f.startswith(head) and "/" not in f[len(head):]]
    return names, f"hub repo {os.fspath(name_or_path)}" + (f" (subfolder {subfolder!r})" if subfolder else "")


# ---------------------------------------------------------------- key report
def compare_keys(
    expected: Mapping[str, tuple[int, ...]],
    found: Mapping[str, tuple[int, ...]],
    ignore_unexpected: Iterable[str] = (),
) -> tuple[list[str], list[str], list[tuple[str, tuple, tuple]]]:
    """(missing, unexpected, mismatched (key, checkpoint shape, model shape)) between two key -> shape maps."""
    missing = sorted(expected.keys() - found.keys())
    patterns = [re.compile(p) for p in ignore_unexpected]
    unexpected = sorted(k for k in found.keys() - expected.keys() if not any(p.search(k) for p in patterns))
    mismatched = [(k, tuple(found[k]), tuple(expected[k])) for k in sorted(expected.keys() & found.keys()) if tuple(found[k]) != tuple(expected[k])]
    return missing, unexpected, mismatched


def key_report(model_name: str, source: str, missing, unexpected, mismatched, limit: int = 25) -> str:
    """One message listing every kind of disagreement between a checkpoint and a model."""
    def block(title: str, items: list[str]) -> str:
        shown = "\n".join(f"    {i}" for i in items[:limit])
        more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
        return f"\n  {title} ({len(items)}):\n{shown}{more}"

    msg = f"The weights in {source} do not fit {model_name}:"
    if missing:
        msg += block("missing from the checkpoint", missing)
    if unexpected:
        msg += block("in the checkpoint but not in the model", unexpected)
    if mismatched:
        msg += block("shape differs (checkpoint vs model)", [f"{k}: {c} vs {m}" for k, c, m in mismatched])
    return msg + (
        "\n  The checkpoint was probably saved for another config or model class: check config.json and the class "
        "you load it with. vidiff refuses partial loads instead of leaving weights randomly initialised."
    )


# ---------------------------------------------------------------- loading into a module
_INIT_FUNCTIONS = ("uniform_", "normal_", "constant_", "ones_", "zeros_", "kaiming_uniform_", "kaiming_normal_",
                   "xavier_uniform_", "xavier_normal_", "trunc_normal_", "orthogonal_")


def _skip_on_meta(init):
    @functools.wraps(init)
    def wrapper(tensor, *args, **kwargs):
        return tensor if isinstance(tensor, torch.Tensor) and tensor.is_meta else init(tensor, *args, **kwargs)

    wrapper._vidiff_skips_meta = True
    return wrapper


@contextlib.contextmanager
def _meta_init_skipped():
    """``torch.nn.init``'s initialisers return meta tensors as they are (what they do to them anyway, minus the
    cost of their meta decompositions: 60% of building a UNet). Other tensors, in any thread, are initialised as
    usual, so the temporary patch changes nothing for other code."""
    saved = {name: getattr(nn.init, name) for name in _INIT_FUNCTIONS if hasattr(nn.init, name)}
    for name, init in saved.items():
        if not getattr(init, "_vidiff_skips_meta", False):
            setattr(nn.init, name, _skip_on_meta(init))
    try:
        yield
    finally:
        for name, init in saved.items():
            setattr(nn.init, name, init)


def build_on_meta(cls, *args, **kwargs):
    """``cls(*args, **kwargs)`` with every tensor on the meta device and no time spent initialising them."""
    with torch.device("meta"), _meta_init_skipped():
        return cls(*args, **kwargs)


def assign_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """``model.load_state_dict(state, strict=True, assign=True)`` for keys and shapes already checked, in one pass.

    Parameters become ``nn.Parameter`` with the model's ``requires_grad``, buffers are set as they are. A model
    with a module that customises loading (``_load_from_state_dict`` overridden, or load hooks) goes through
    ``load_state_dict`` instead.
    """
    modules = dict(model.named_modules(remove_duplicate=False))
    if any(type(m)._load_from_state_dict is not nn.Module._load_from_state_dict or m._load_state_dict_pre_hooks
           or m._load_state_dict_post_hooks for m in modules.values()):
        model.load_state_dict(state, strict=True, assign=True)
        return
    for key, tensor in state.items():
        path, _, name = key.rpartition(".")
        module = modules[path]
        old = module._parameters.get(name)
        if old is not None:
            module._parameters[name] = nn.Parameter(tensor, requires_grad=old.requires_grad)
        elif name in module._buffers:
            module._buffers[name] = tensor
        else:
            raise CheckpointError(f"{key} names neither a parameter nor a buffer of {type(model).__name__}")


def _keeps_fp32(key: str, keep_in_fp32: Iterable[str]) -> bool:
    parts = key.split(".")
    return any(m in parts for m in keep_in_fp32)


def target_dtypes(
    specs: Mapping[str, TensorSpec],
    rename: Mapping[str, str],
    model_tensors: Mapping[str, torch.Tensor],
    torch_dtype: torch.dtype | None,
    keep_in_fp32: Iterable[str] = (),
) -> dict[str, torch.dtype]:
    """File key -> dtype to load it as, following diffusers: floating tensors become ``torch_dtype``
    (float32 inside ``_keep_in_fp32_modules``); without ``torch_dtype`` every tensor takes the dtype the
    model was built with (so an fp16 file loads as float32, as in the reference)."""
    keep = list(keep_in_fp32)
    out = {}
    for key, spec in specs.items():
        model_key = rename[key]
        floating = spec.dtype is not None and spec.dtype.is_floating_point
        if torch_dtype is not None:
            if floating:
                out[key] = torch.float32 if _keeps_fp32(model_key, keep) else torch_dtype
        elif model_key in model_tensors:
            out[key] = model_tensors[model_key].dtype
    return out


def load_into_model(
    model: nn.Module,
    files: list[Path],
    *,
    torch_dtype: torch.dtype | None = None,
    allow_pickle: bool = False,
    source: str = "the checkpoint",
    supplied: Mapping[str, torch.Tensor] | None = None,
    ignore_unexpected: Iterable[str] = (),
) -> None:
    """Check, read and assign a checkpoint into a module built on the meta device.

    Hooks the model may define (``ModelMixin`` provides defaults): ``_fix_state_dict_keys_on_load(dict)``
    renames old checkpoint keys in place; ``_keys_to_ignore_on_load_unexpected`` (regexes) lists
    checkpoint keys to drop silently; ``_keep_in_fp32_modules`` names modules kept in float32;
    ``_init_non_persistent_buffers()`` re-creates buffers that are not in any checkpoint.

    ``supplied`` (model key -> tensor) provides the model's tensors that are not in the files (an AnimateDiff
    UNet's motion modules, from the adapter): checked with the files' keys, cast with the files' dtype rule, and
    copied, or mapped again from their file where they are its unmodified pages (:func:`vidiff.runtime.stream.remap`).
    ``ignore_unexpected`` adds regexes of file keys to drop.
    """
    specs = read_tensor_shapes(files, allow_pickle=allow_pickle)
    rename = checkpoint_key_map(model, list(specs))
    supplied = dict(supplied or {})
    model_tensors = model.state_dict(keep_vars=True)
    found = {rename[k]: s.shape for k, s in specs.items()}
    both = sorted(found.keys() & supplied.keys())
    if both:
        raise CheckpointError(f"{type(model).__name__}: {both[:5]} are both in {source} and supplied; each tensor needs one source")
    found.update((k, tuple(t.shape)) for k, t in supplied.items())
    expected = {k: tuple(t.shape) for k, t in model_tensors.items()}
    ignore = [*(getattr(model, "_keys_to_ignore_on_load_unexpected", None) or ()), *ignore_unexpected]
    missing, unexpected, mismatched = compare_keys(expected, found, ignore)
    if missing or unexpected or mismatched:
        raise CheckpointError(key_report(type(model).__name__, source, missing, unexpected, mismatched))
    keep = getattr(model, "_keep_in_fp32_modules", None) or ()
    dtypes = target_dtypes(specs, rename, model_tensors, torch_dtype, keep)
    state = load_state_dict(files, dtype=dtypes, allow_pickle=allow_pickle)
    state = {rename[k]: t for k, t in state.items() if rename[k] in model_tensors}
    cast = target_dtypes({k: TensorSpec(tuple(t.shape), t.dtype) for k, t in supplied.items()}, {k: k for k in supplied},
                         model_tensors, torch_dtype, keep)
    # supplied tensors that are a file's unmodified pages are mapped again from it (no copy, and still independent
    # of the model they came from); the others are copied
    from ..runtime.stream import remap

    same = {k: t.detach() for k, t in supplied.items() if t.device.type == "cpu" and cast.get(k, t.dtype) == t.dtype}
    state.update(remap(same))
    for key, tensor in supplied.items():
        if key not in state:
            state[key] = tensor.detach().to(device="cpu", dtype=cast.get(key, tensor.dtype), copy=True)
    assign_state_dict(model, state)
    del state
    materialize_leftovers(model, torch_dtype, keep)


def checkpoint_key_map(model: nn.Module, keys: list[str]) -> dict[str, str]:
    """File key -> model key, through the model's ``_fix_state_dict_keys_on_load`` hook (identity if absent)."""
    fix = getattr(model, "_fix_state_dict_keys_on_load", None)
    if fix is None:
        return {k: k for k in keys}
    probe = {k: k for k in keys}  # values remember the original names while the hook renames the keys
    fix(probe)
    return {old: new for new, old in probe.items()}


def meta_tensors(model: nn.Module) -> list[str]:
    named = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
    return sorted(name for name, t in named if t.is_meta)


def materialize_leftovers(model: nn.Module, torch_dtype: torch.dtype | None, keep_in_fp32: Iterable[str] = ()) -> None:
    """Re-create what is still on the meta device (non-persistent buffers), then cast buffers to torch_dtype."""
    leftover = meta_tensors(model)
    if leftover:
        init = getattr(model, "_init_non_persistent_buffers", None)
        if init is not None:
            init()
        leftover = meta_tensors(model)
    if leftover:
        raise CheckpointError(
            f"{type(model).__name__}: {leftover[:20]} are not in the checkpoint and were not re-created after loading "
            "(they are still on the meta device). Buffers that are not saved (persistent=False) must be rebuilt by "
            "the model: override `_init_non_persistent_buffers()` in the model, or give the submodule that owns them "
            "an `_init_non_persistent_buffers()` method."
        )
    if torch_dtype is None:
        return
    persistent = set(model.state_dict().keys())
    keep = list(keep_in_fp32)
    for name, module in model.named_modules():
        for bname, buf in list(module._buffers.items()):
            full = f"{name}.{bname}" if name else bname
            if buf is None or full in persistent or not buf.is_floating_point():
                continue
            module._buffers[bname] = buf.to(torch.float32 if _keeps_fp32(full, keep) else torch_dtype)
