"""Finding checkpoint files: a local folder as it is, or a Hugging Face hub id through huggingface_hub's cache.

Offline mode: ``HF_HUB_OFFLINE=1`` (read at call time, not only at import) or ``local_files_only=True``
resolves from the cache alone and, when a file is not cached, raises :class:`CheckpointNotFoundError`
that names the cache folder and the two ways out (download once online, or pass a local folder).

Hub keyword arguments shared by every function here: ``revision``, ``cache_dir``, ``local_files_only``,
``token`` and (where a download can happen) ``force_download``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from .errors import CheckpointError, CheckpointNotFoundError
from .filenames import is_index_file, is_weight_file, select_component_weights

logger = logging.getLogger(__name__)

_TRUE = {"1", "ON", "YES", "TRUE"}


def is_offline(local_files_only: bool | None = None) -> bool:
    """True when downloads are off: ``local_files_only=True`` or ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` set."""
    if local_files_only:
        return True
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return env.strip().upper() in _TRUE or bool(constants.HF_HUB_OFFLINE)


def cache_folder(cache_dir: str | os.PathLike | None = None) -> Path:
    from huggingface_hub import constants

    return Path(cache_dir or constants.HF_HUB_CACHE).expanduser()


def local_folder(name_or_path: str | os.PathLike) -> Path | None:
    """The folder ``name_or_path`` names on disk, or None when it is not one (then it may be a hub id)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.is_file():
        raise CheckpointNotFoundError(
            f"{path} is a file; expected a diffusers-format folder (config.json + weights) or a hub id such as 'org/name'"
        )
    return None


def hub_repo_id(name_or_path: str | os.PathLike) -> str:
    """Validate ``name_or_path`` as a hub id; a clear error when it is neither a folder nor an id."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    name = os.fspath(name_or_path)
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise CheckpointNotFoundError(
            f"{name!r}: no such folder, and not a valid hub id (expected 'org/name'). Check the path, "
            "or pass the id of a model on huggingface.co."
        ) from None
    return name


def _why_offline(local_files_only: bool | None) -> str:
    return "local_files_only=True" if local_files_only else "HF_HUB_OFFLINE=1 (offline mode)"


def _not_cached(repo: str, what: str, revision: str | None, cache_dir, reason: str) -> CheckpointNotFoundError:
    return CheckpointNotFoundError(
        f"{repo}: {what} (revision {revision or 'main'}) is not in the Hugging Face cache at {cache_folder(cache_dir)}, "
        f"and it cannot be downloaded now ({reason}). To fix it: run once with network access (unset HF_HUB_OFFLINE, "
        "local_files_only=False) so it is downloaded into the cache, or pass the path of a local folder holding the "
        f"model (e.g. `hf download {repo} --local-dir DIR`, then from_pretrained(DIR)). "
        f"There is no local folder named {repo!r} either."
    )


def _hub_error(e: Exception, repo: str, what: str, revision: str | None, cache_dir, offline: bool, local_files_only) -> Exception:
    """Turn a huggingface_hub exception into one that says what to do."""
    from huggingface_hub import errors as hf

    not_cached = tuple(c for c in (hf.LocalEntryNotFoundError, getattr(hf, "IncompleteSnapshotError", None)) if c)
    if isinstance(e, not_cached):
        reason = _why_offline(local_files_only) if offline else f"the Hub could not be reached: {e}"
        return _not_cached(repo, what, revision, cache_dir, reason)
    if isinstance(e, hf.GatedRepoError):
        return CheckpointNotFoundError(f"{repo} is gated: accept its terms on huggingface.co and pass token=... (or run `hf auth login`)")
    if isinstance(e, hf.RepositoryNotFoundError):
        return CheckpointNotFoundError(
            f"{repo!r} is not a local folder and not a model repo on huggingface.co (if it is private, pass token=... "
            "or run `hf auth login`)"
        )
    if isinstance(e, hf.RevisionNotFoundError):
        return CheckpointNotFoundError(f"{repo} has no revision {revision!r} (a branch, tag or commit id)")
    if isinstance(e, hf.EntryNotFoundError):
        return CheckpointNotFoundError(f"{repo} (revision {revision or 'main'}) has no file {what}")
    if isinstance(e, ValueError) and "force_download" in str(e):
        return CheckpointError(f"force_download=True needs network access, but downloads are off ({_why_offline(local_files_only)})")
    return CheckpointNotFoundError(f"could not fetch {what} from {repo}: {type(e).__name__}: {e}")


def resolve_file(
    name_or_path: str | os.PathLike,
    filename: str,
    subfolder: str | None = None,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
    token: str | bool | None = None,
    force_download: bool = False,
) -> Path:
    """Path of ``[subfolder/]filename`` in a local folder, or in the hub cache (downloading it if allowed)."""
    folder = local_folder(name_or_path)
    if folder is not None:
        return _local_file(folder, filename, subfolder)
    repo = hub_repo_id(name_or_path)
    from huggingface_hub import hf_hub_download

    offline = is_offline(local_files_only)
    what = f"{subfolder}/{filename}" if subfolder else filename
    try:
        path = hf_hub_download(
            repo, filename, subfolder=subfolder or None, revision=revision, cache_dir=cache_dir,
            local_files_only=offline, token=token, force_download=force_download,
        )
    except Exception as e:
        raise _hub_error(e, repo, what, revision, cache_dir, offline, local_files_only) from e
    return Path(path)


def _local_file(folder: Path, filename: str, subfolder: str | None) -> Path:
    where = folder / subfolder if subfolder else folder
    path = where / filename
    if path.is_file():
        return path
    if not where.is_dir():
        subs = sorted(p.name for p in folder.iterdir() if p.is_dir())
        raise CheckpointNotFoundError(f"{folder} has no subfolder {subfolder!r}; its subfolders are {subs}")
    present = sorted(p.name for p in where.iterdir())[:30]
    raise CheckpointNotFoundError(f"{where} has no file {filename}; it holds {present}")


def resolve_snapshot(
    name_or_path: str | os.PathLike,
    allow_patterns: Iterable[str] | None = None,
    *,
    ignore_patterns: Iterable[str] | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
    token: str | bool | None = None,
    force_download: bool = False,
) -> Path:
    """A local folder as it is, or the hub snapshot folder holding the files matching ``allow_patterns``.

    Every pattern without wildcards (an exact file such as ``unet/diffusion_pytorch_model.safetensors``)
    must exist in the result; one that does not raises :class:`CheckpointNotFoundError` listing them.
    """
    folder = local_folder(name_or_path)
    if folder is not None:
        return folder
    repo = hub_repo_id(name_or_path)
    from huggingface_hub import snapshot_download

    offline = is_offline(local_files_only)
    patterns = list(allow_patterns) if allow_patterns is not None else None
    try:
        path = Path(snapshot_download(
            repo, revision=revision, cache_dir=cache_dir, local_files_only=offline, token=token,
            force_download=force_download, allow_patterns=patterns,
            ignore_patterns=list(ignore_patterns) if ignore_patterns is not None else None,
        ))
    except Exception as e:
        raise _hub_error(e, repo, "the snapshot", revision, cache_dir, offline, local_files_only) from e
    missing = [p for p in patterns or [] if not any(c in p for c in "*?[") and not (path / p).is_file()]
    if missing:
        reason = _why_offline(local_files_only) if offline else "the repo does not have them"
        raise _not_cached(repo, f"files {missing}", revision, cache_dir, reason)
    return path


def list_repo_files_cached(
    name_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
    token: str | bool | None = None,
    force_download: bool = False,
) -> list[str]:
    """All file paths (posix, relative) of a local folder or hub repo, without downloading any file.

    Online: one listing call to the Hub (falls back to the cache, with a warning, if it fails to connect).
    Offline: the files present in the cached snapshot of ``revision``. (``force_download`` is accepted so
    that the same hub keyword arguments fit every function here; listing downloads nothing.)
    """
    folder = local_folder(name_or_path)
    if folder is not None:
        return _walk(folder)
    repo = hub_repo_id(name_or_path)
    if not is_offline(local_files_only):
        from huggingface_hub import HfApi, errors as hf

        try:
            return sorted(HfApi().list_repo_files(repo, revision=revision, token=token))
        except (hf.RepositoryNotFoundError, hf.RevisionNotFoundError, hf.GatedRepoError) as e:
            raise _hub_error(e, repo, "the file list", revision, cache_dir, False, local_files_only) from e
        except Exception as e:  # connection errors come from httpx/requests depending on the version
            logger.warning("Could not list %s on the Hub (%s: %s); using the files in the local cache.", repo, type(e).__name__, e)
    return _walk(cached_snapshot_folder(repo, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only))


def cached_snapshot_folder(repo: str, *, revision: str | None = None, cache_dir=None, local_files_only=None) -> Path:
    """``<cache>/models--org--name/snapshots/<commit>`` for ``revision`` (a branch/tag via ``refs/``, or a commit)."""
    from huggingface_hub.file_download import REGEX_COMMIT_HASH, repo_folder_name

    storage = cache_folder(cache_dir) / repo_folder_name(repo_id=repo, repo_type="model")
    rev = revision or "main"
    commit = rev if REGEX_COMMIT_HASH.fullmatch(rev) else None
    ref = storage / "refs" / rev
    if commit is None and ref.is_file():
        commit = ref.read_text().strip()
    snapshot = storage / "snapshots" / commit if commit else None
    if snapshot is None or not snapshot.is_dir():
        reason = _why_offline(local_files_only) if is_offline(local_files_only) else "the Hub could not be reached"
        raise _not_cached(repo, "the repo", revision, cache_dir, reason)
    return snapshot


def _walk(folder: Path) -> list[str]:
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = Path(root).relative_to(folder)
        out += [(rel / f).as_posix() for f in files if not f.startswith(".") and (Path(root) / f).is_file()]
    return sorted(out)


# ---------------------------------------------------------------- pipelines
FileLister = Iterable[str] | Callable[[str], Iterable[str]]


def _folder_lister(files: FileLister) -> Callable[[str], list[str]]:
    if callable(files):
        return lambda folder: [n.rsplit("/", 1)[-1] for n in files(folder)]
    by_folder: dict[str, list[str]] = {}
    for f in files:
        head, _, name = f.rpartition("/")
        by_folder.setdefault(head, []).append(name)
    return lambda folder: by_folder.get(folder, [])


def _is_component(entry: Any) -> bool:
    return isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[0] is not None and entry[1] is not None


def pipeline_allow_patterns(
    model_index: Mapping[str, Any],
    files: FileLister,
    variant: str | None = None,
    use_safetensors: bool | None = None,
    allow_pickle: bool = False,
    *,
    skip: Iterable[str] = (),
) -> list[str]:
    """The patterns to download for a pipeline, given its model_index.json and its file list.

    ``files``: every repo-relative path (what :func:`list_repo_files_cached` returns) or a function
    ``folder -> names in it``. Result: ``model_index.json``; for each model component folder its chosen
    weight files only (variant if present, else the plain files, with a warning; safetensors before
    pickles; never flax/onnx/ckpt duplicates) plus its non-weight files (config.json, tokenizer files);
    ``folder/*`` for folders without weights (scheduler, tokenizer, feature_extractor). Components in
    ``skip`` (passed by the caller as objects) and ``[null, null]`` entries are left out.
    A ``variant`` that no component has is an error, as in diffusers.
    """
    listing = _folder_lister(files)
    skip = set(skip)
    patterns = ["model_index.json"]
    model_folders, with_variant = 0, 0
    for name, entry in model_index.items():
        if name.startswith("_") or name in skip or not _is_component(entry):
            continue
        names = listing(name)
        chosen = select_component_weights(names, variant, use_safetensors, allow_pickle, where=f"component folder {name!r}")
        if chosen is None:
            patterns.append(f"{name}/*")
            continue
        model_folders += 1
        with_variant += bool(variant) and all(f".{variant}" in f for f in chosen)
        extras = [n for n in names if not is_weight_file(n) and not is_index_file(n) and not n.startswith(".")]
        patterns += [f"{name}/{n}" for n in sorted(set(chosen) | set(extras))]
    if variant and model_folders and not with_variant:
        raise CheckpointNotFoundError(
            f"no component of this pipeline has weights for variant={variant!r}; pass variant=None to load the default weights"
        )
    return patterns


def pipeline_download_patterns(
    name_or_path: str | os.PathLike,
    model_index: Mapping[str, Any],
    *,
    variant: str | None = None,
    use_safetensors: bool | None = None,
    allow_pickle: bool = False,
    skip: Iterable[str] = (),
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
    token: str | bool | None = None,
    force_download: bool = False,
) -> list[str]:
    """:func:`pipeline_allow_patterns` for a hub id or folder, listing its files first (offline: the cache).

    Typical use in a pipeline loader (``hub_kwargs``: revision, cache_dir, local_files_only, token,
    force_download)::

        index = read_json(resolve_file(name, "model_index.json", **hub_kwargs))
        patterns = pipeline_download_patterns(name, index, variant=variant, skip=passed_components, **hub_kwargs)
        folder = resolve_snapshot(name, patterns, **hub_kwargs)
    """
    files = list_repo_files_cached(name_or_path, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only, token=token)
    return pipeline_allow_patterns(model_index, files, variant, use_safetensors, allow_pickle, skip=skip)
