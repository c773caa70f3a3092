"""Checkpoint loading: hub/folder resolution, weight-file choice, safetensors I/O, loading into modules.

- :mod:`.hub`: ``resolve_file``, ``resolve_snapshot``, ``list_repo_files_cached``, ``pipeline_allow_patterns``
- :mod:`.filenames`: diffusers/transformers weight names, ``select_weight_files``
- :mod:`.weights`: ``load_state_dict``, ``read_tensor_shapes``, ``save_state_dict``
- :mod:`.checkpoint`: ``resolve_weight_files``, ``load_into_model`` (used by ``ModelMixin.from_pretrained``)
- :mod:`.errors`: ``CheckpointNotFoundError``, ``CheckpointError``

Names resolve lazily so that importing one submodule does not import the others.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CheckpointError": "errors",
    "CheckpointNotFoundError": "errors",
    "resolve_file": "hub",
    "resolve_snapshot": "hub",
    "list_repo_files_cached": "hub",
    "pipeline_allow_patterns": "hub",
    "pipeline_download_patterns": "hub",
    "is_offline": "hub",
    "select_weight_files": "filenames",
    "select_component_weights": "filenames",
    "has_variant": "filenames",
    "add_variant": "filenames",
    "load_state_dict": "weights",
    "read_tensor_shapes": "weights",
    "save_state_dict": "weights",
    "resolve_weight_files": "checkpoint",
    "load_into_model": "checkpoint",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'vidiff.loading' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
