"""Loading the pipelines' CLIP encoders without transformers' general loader, when the folder is the plain case.

transformers' ``from_pretrained`` runs its whole checkpoint-conversion machinery for every model (on a process's
first load it compiles a table of key-renaming regexes: 0.12 of 0.15 s for a small CLIP text encoder, more than
reading the weights). For the CLIP classes the video pipelines use, a folder with one float32 safetensors file
whose keys are exactly the model's needs none of it: :func:`load_clip` builds the transformers class itself on the
meta device, assigns the file's tensors, fills the ``position_ids`` buffers as transformers' own initialisation
does, and returns it in eval mode with ``config._name_or_path`` set, the object transformers would return. Any
other case (another class, dtype or variant request, shards, other dtypes in the file or config, a key mismatch,
any other tensor left unset) returns ``None`` and the caller uses transformers' ``from_pretrained``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .checkpoint import assign_state_dict, build_on_meta
from .weights import load_state_dict, read_tensor_shapes

FAST_CLASSES = ("CLIPTextModel", "CLIPTextModelWithProjection", "CLIPVisionModel", "CLIPVisionModelWithProjection")


def load_clip(cls: type, folder: Path, torch_dtype=None, variant: str | None = None) -> Any | None:
    """``cls.from_pretrained(folder)`` for the plain case (see module docstring), else ``None``."""
    weights = folder / "model.safetensors"
    if (cls.__name__ not in FAST_CLASSES or cls.__module__.split(".")[0] != "transformers" or torch_dtype is not None
            or variant is not None or not weights.is_file() or (folder / "model.safetensors.index.json").exists()):
        return None
    config = cls.config_class.from_pretrained(folder)
    if getattr(config, "dtype", None) not in (None, torch.float32, "float32"):
        return None
    specs = read_tensor_shapes(weights)  # the header only: a file that does not fit is not read
    if any(spec.dtype is None or (spec.dtype.is_floating_point and spec.dtype != torch.float32) for spec in specs.values()):
        return None
    model = build_on_meta(cls, config)
    expected = model.state_dict()
    if set(expected) != set(specs) or any(tuple(expected[k].shape) != spec.shape for k, spec in specs.items()):
        return None
    state = load_state_dict(weights)
    assign_state_dict(model, state)
    for module in model.modules():  # non-persistent buffers: not in the file, built on meta
        for name, buf in list(module._buffers.items()):
            if buf is not None and buf.is_meta:
                if name != "position_ids" or buf.dim() != 2 or buf.shape[0] != 1:
                    return None
                module._buffers[name] = torch.arange(buf.shape[-1], dtype=buf.dtype).expand((1, -1))  # as transformers' _init_weights
    if any(t.is_meta for t in model.state_dict(keep_vars=True).values()):
        return None
    model.config._name_or_path = str(folder)
    return model.eval()
