"""Weight file names as diffusers and transformers write them, and picking the files to load.

Naming (identical to diffusers 0.42 ``save_pretrained`` and ``_add_variant``)::

    single file        diffusion_pytorch_model.safetensors         .fp16.safetensors with variant="fp16"
    shard index        diffusion_pytorch_model.safetensors.index.json   .safetensors.index.fp16.json
    shards             diffusion_pytorch_model-00001-of-00002.safetensors
                       diffusion_pytorch_model.fp16-00001-of-00002.safetensors
    legacy variant     diffusion_pytorch_model.safetensors.fp16.index.json  (read only, deprecated upstream)
    shards             diffusion_pytorch_model-00001-of-00002.fp16.safetensors

Pickle files use ``.bin`` in place of ``.safetensors``. transformers components use the prefix ``model``
for safetensors and ``pytorch_model`` for pickles, with the same variant and shard scheme.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

from .errors import CheckpointError, CheckpointNotFoundError

logger = logging.getLogger(__name__)

DIFFUSERS_PREFIX = "diffusion_pytorch_model"
TRANSFORMERS_PREFIX = "model"  # model.safetensors
TRANSFORMERS_PICKLE_PREFIX = "pytorch_model"  # pytorch_model.bin
SAFETENSORS = "safetensors"
PICKLE = "bin"

# Extensions of weight formats: the two we load, and the ones a diffusers repo may carry beside them.
WEIGHT_EXTENSIONS = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".msgpack", ".onnx", ".pb", ".h5", ".gguf", ".flashpack")
_SHARD = r"-\d{5}-of-\d{5}"


def add_variant(name: str, variant: str | None) -> str:
    """``diffusion_pytorch_model.safetensors`` -> ``diffusion_pytorch_model.fp16.safetensors``."""
    if not variant:
        return name
    stem, ext = name.rsplit(".", 1)
    return f"{stem}.{variant}.{ext}"


def weights_name(prefix: str, ext: str, variant: str | None = None) -> str:
    return add_variant(f"{prefix}.{ext}", variant)


def index_name(prefix: str, ext: str, variant: str | None = None) -> str:
    """``diffusion_pytorch_model.safetensors.index.json`` (``...index.fp16.json`` with a variant)."""
    return add_variant(f"{prefix}.{ext}.index.json", variant)


def shard_pattern(prefix: str, ext: str, variant: str | None = None) -> str:
    """Shard name with a ``{suffix}`` slot for ``-00001-of-00002`` (huggingface_hub's filename_pattern)."""
    return weights_name(prefix, ext, variant).replace(f".{ext}", "{suffix}" + f".{ext}")


def _legacy_index_name(prefix: str, ext: str, variant: str) -> str:
    return f"{prefix}.{ext}.{variant}.index.json"


def shard_regex(prefix: str, ext: str, variant: str | None, legacy: bool = False) -> re.Pattern:
    p, e = re.escape(prefix), re.escape(ext)
    if legacy:
        return re.compile(rf"{p}{_SHARD}\.{re.escape(variant or '')}\.{e}")
    v = rf"\.{re.escape(variant)}" if variant else ""
    return re.compile(rf"{p}{v}{_SHARD}\.{e}")


def is_index_file(name: str) -> bool:
    return name.endswith(".json") and ".index." in name


def is_weight_file(name: str) -> bool:
    return name.endswith(WEIGHT_EXTENSIONS)


def _find(names: set[str], prefix: str, ext: str, variant: str | None) -> list[str] | None:
    """Index + shards, legacy index + shards, or the single file, in diffusers' order of preference."""
    index = index_name(prefix, ext, variant)
    if index in names:
        return [index] + sorted(n for n in names if shard_regex(prefix, ext, variant).fullmatch(n))
    if variant:
        legacy = _legacy_index_name(prefix, ext, variant)
        if legacy in names:
            logger.warning(
                "%s uses the deprecated sharded-variant naming (%s); it loads, but re-saving with save_pretrained "
                "writes the current naming.", legacy, shard_regex(prefix, ext, variant, legacy=True).pattern
            )
            return [legacy] + sorted(n for n in names if shard_regex(prefix, ext, variant, legacy=True).fullmatch(n))
    single = weights_name(prefix, ext, variant)
    return [single] if single in names else None


def _formats(use_safetensors: bool | None) -> list[str]:
    if use_safetensors is None:
        return [SAFETENSORS, PICKLE]
    return [SAFETENSORS] if use_safetensors else [PICKLE]


def select_weight_files(
    available_names: Iterable[str],
    prefix: str = DIFFUSERS_PREFIX,
    variant: str | None = None,
    use_safetensors: bool | None = None,
    allow_pickle: bool = False,
    *,
    pickle_prefix: str | None = None,
    variant_fallback: bool = False,
    where: str = "the checkpoint folder",
) -> list[str]:
    """Choose the weight files to load among the file names of one model folder.

    Returns ``[single_file]`` or ``[index_file, shard, shard, ...]`` (shards found by name; the index's
    ``weight_map`` stays the authority when loading). Preference, as in diffusers: safetensors before
    pickles (``use_safetensors=None``), only safetensors (``True``) or only pickles (``False``); within a
    format the shard index before the single file.

    ``variant`` requested but absent is an error listing the weight files that exist, like
    ``ModelMixin.from_pretrained`` in diffusers. ``variant_fallback=True`` instead falls back to the
    non-variant files with a logged warning, as diffusers' pipeline loader does per component.

    Pickle files (``.bin``) are only chosen with ``allow_pickle=True``; without it, finding nothing but
    pickles raises :class:`CheckpointError` that says how to opt in.
    """
    names = {n.rsplit("/", 1)[-1] for n in available_names}
    refused: list[str] = []
    variants = [variant, None] if (variant and variant_fallback) else [variant]
    for v in variants:
        for ext in _formats(use_safetensors):
            found = _find(names, (pickle_prefix or prefix) if ext == PICKLE else prefix, ext, v)
            if found is None:
                continue
            if ext == PICKLE and not allow_pickle:
                refused += found
                continue
            if v != variant:
                logger.warning("%s has no %r variant of its weights; loading the non-variant files %s", where, variant, found)
            return found
    if refused:
        raise CheckpointError(
            f"{where} holds only pickle weights ({', '.join(refused)}). vidiff does not unpickle by default because a "
            "pickle can run code when loaded. Pass allow_pickle=True to load them (with torch.load(weights_only=True)), "
            "or convert them to safetensors once."
        )
    raise CheckpointNotFoundError(_not_found_message(names, prefix, variant, use_safetensors, where))


def _not_found_message(names: set[str], prefix: str, variant: str | None, use_safetensors: bool | None, where: str) -> str:
    ext = PICKLE if use_safetensors is False else SAFETENSORS
    expected = f"{weights_name(prefix, ext, variant)} or {index_name(prefix, ext, variant)} with its shards"
    present = sorted(n for n in names if is_weight_file(n) or is_index_file(n))
    msg = f"{where} has no weights named {expected}"
    msg += f"; weight files there: {present}" if present else f"; it holds no weight files at all (files: {sorted(names)[:20]})"
    if variant and any(_find(names, prefix, e, None) for e in (SAFETENSORS, PICKLE)):
        msg += f". There are weights without the {variant!r} variant: pass variant=None to load them"
    elif use_safetensors and any(n.endswith(".bin") for n in present):
        msg += ". Only pickle .bin weights exist: pass use_safetensors=None (or False) and allow_pickle=True"
    elif any(n.endswith((".ckpt", ".pt", ".pth")) for n in present):
        msg += ". A .ckpt/.pt file is a single-file (original-format) checkpoint, not a diffusers folder; convert it to diffusers format first"
    return msg + "."


def has_variant(available_names: Iterable[str], variant: str) -> bool:
    """Whether a folder's file names include weights (single, sharded or legacy) for ``variant``."""
    names = {n.rsplit("/", 1)[-1] for n in available_names}
    prefixes = (DIFFUSERS_PREFIX, TRANSFORMERS_PREFIX, TRANSFORMERS_PICKLE_PREFIX)
    return any(_find(names, p, e, variant) for p in prefixes for e in (SAFETENSORS, PICKLE))


def select_component_weights(
    available_names: Iterable[str],
    variant: str | None = None,
    use_safetensors: bool | None = None,
    allow_pickle: bool = False,
    *,
    variant_fallback: bool = True,
    where: str = "the component folder",
) -> list[str] | None:
    """Weight files of a pipeline component folder, diffusers- or transformers-named; None if it has none.

    A folder without any weight-format file (scheduler, tokenizer, feature extractor) gives None.
    """
    names = [n.rsplit("/", 1)[-1] for n in available_names]
    if not any(is_weight_file(n) for n in names):
        return None
    if any(n.startswith(DIFFUSERS_PREFIX) for n in names):
        prefix, pickle_prefix = DIFFUSERS_PREFIX, None
    else:
        prefix, pickle_prefix = TRANSFORMERS_PREFIX, TRANSFORMERS_PICKLE_PREFIX
    return select_weight_files(
        names, prefix, variant, use_safetensors, allow_pickle,
        pickle_prefix=pickle_prefix, variant_fallback=variant_fallback, where=where,
    )
