"""model_index.json: which pipeline class, which component classes, and loading/saving them."""

from __future__ import annotations

import inspect
import logging
import os
from pathlib import Path
from typing import Any

import torch

from ..configuration import DIFFUSERS_FORMAT_VERSION, ConfigError, read_json, write_json_atomic
from .clip import load_clip

logger = logging.getLogger("vidiff")

HUB_KWARGS = ("revision", "cache_dir", "local_files_only", "token", "force_download")
_TRANSFORMERS_LIBS = ("transformers",)


def _vidiff_class(name: str):
    import vidiff

    return getattr(vidiff, name, None)


def component_entry(module: Any) -> list[str | None]:
    """[library, class name] as model_index.json records it; vidiff classes are written as "diffusers"."""
    if module is None:
        return [None, None]
    cls = type(module)
    root = cls.__module__.split(".")[0]
    library = "diffusers" if root == "vidiff" else root
    return [library, cls.__name__]


def pipeline_class_for(cls: type, index: dict[str, Any], where: str) -> type:
    """The class to build: ``cls`` itself unless it is the generic DiffusionPipeline."""
    from ..pipelines.base import DiffusionPipeline

    if cls is not DiffusionPipeline:
        return cls
    name = index.get("_class_name")
    found = _vidiff_class(name) if isinstance(name, str) else None
    if not (isinstance(found, type) and issubclass(found, DiffusionPipeline)):
        import vidiff

        known = sorted(n for n in dir(vidiff) if n.endswith("Pipeline") and n != "DiffusionPipeline")
        raise ConfigError(f"{where}/model_index.json names pipeline class {name!r}, which vidiff does not provide; known pipelines: {known}")
    return found


def _resolve_folder(name_or_path: str | os.PathLike, hub_kwargs: dict[str, Any], variant: str | None,
                    use_safetensors: bool | None, allow_pickle: bool, skip: list[str]) -> Path:
    """A local folder as is; a hub id -> a snapshot holding only the files this pipeline needs."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    from . import hub

    index = read_json(hub.resolve_file(str(name_or_path), "model_index.json", **hub_kwargs))
    patterns = hub.pipeline_download_patterns(str(name_or_path), index, variant=variant, use_safetensors=use_safetensors,
                                              allow_pickle=allow_pickle, skip=skip, **hub_kwargs)
    return Path(hub.resolve_snapshot(str(name_or_path), patterns, **hub_kwargs))


def _component_variant(sub: Path, variant: str | None) -> str | None:
    """The requested variant where this component has it, else None (the reference's per-component fallback)."""
    from .filenames import has_variant

    if variant is None or not sub.is_dir():
        return variant
    names = [f.name for f in sub.iterdir()]
    if has_variant(names, variant):
        return variant
    if any(n.endswith((".safetensors", ".bin", ".ckpt")) for n in names):  # weights, just not this variant
        logger.warning("component %s has no %r weights; loading its default weights", sub.name, variant)
    return None


def load_pipeline(cls: type, name_or_path: str | os.PathLike, **kwargs: Any):
    hub_kwargs = {k: kwargs.pop(k) for k in HUB_KWARGS if k in kwargs}
    torch_dtype = kwargs.pop("torch_dtype", None)
    variant = kwargs.pop("variant", None)
    use_safetensors = kwargs.pop("use_safetensors", None)
    allow_pickle = kwargs.pop("allow_pickle", False)
    for accepted in ("low_cpu_mem_usage", "device_map"):
        value = kwargs.pop(accepted, None)
        if accepted == "device_map" and value not in (None, "cpu"):
            raise ValueError(f"device_map={value!r} is not supported; load on the CPU and call pipe.to(device) or pipe.enable_model_cpu_offload()")
    if torch_dtype is not None and not isinstance(torch_dtype, torch.dtype):
        raise TypeError(f"torch_dtype must be a torch.dtype such as torch.float16, got {torch_dtype!r}")

    # components the pipeline never loads (e.g. safety_checker) are not downloaded either
    passed = [k for k in kwargs if not k.startswith("_")] + list(getattr(cls, "_not_loaded_components", ()))
    folder = _resolve_folder(name_or_path, hub_kwargs, variant, use_safetensors, allow_pickle, passed)
    index = read_json(folder / "model_index.json")
    pipe_cls = pipeline_class_for(cls, index, str(folder))
    expected = pipe_cls.component_names()
    overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in expected}
    if kwargs:
        logger.warning("%s.from_pretrained: ignoring keyword arguments it does not use: %s", pipe_cls.__name__, sorted(kwargs))

    components: dict[str, Any] = {}
    for name in expected:
        if name in overrides:
            components[name] = overrides[name]
            continue
        entry = index.get(name)
        if name in getattr(pipe_cls, "_not_loaded_components", ()):
            if isinstance(entry, list) and entry[-1] is not None:
                logger.warning("%s: vidiff has no %s; %s is not loaded and images are not filtered (pass %s=None to silence this)", pipe_cls.__name__, name, entry[-1], name)
            components[name] = None
            continue
        if entry is not None and not isinstance(entry, list):  # a config value such as requires_safety_checker
            components[name] = entry
            continue
        if entry is None and not _required(pipe_cls, name) and name not in pipe_cls._optional_components:
            continue  # an __init__ argument with a default the folder does not set
        if entry is None or entry == [None, None] or (isinstance(entry, list) and entry[1] is None):
            if name not in pipe_cls._optional_components and _required(pipe_cls, name):
                raise ConfigError(f"{folder}/model_index.json has no component {name!r}, which {pipe_cls.__name__} needs; pass {name}=... to from_pretrained")
            components[name] = None
            continue
        components[name] = pipe_cls._load_component(folder, name, entry, overrides, torch_dtype=torch_dtype,
                                                    variant=_component_variant(folder / name, variant),
                                                    use_safetensors=use_safetensors, allow_pickle=allow_pickle)
    pipe = pipe_cls(**components)
    pipe._name_or_path = str(name_or_path)
    return pipe


def _required(pipe_cls: type, name: str) -> bool:
    param = inspect.signature(pipe_cls.__init__).parameters.get(name)
    return param is not None and param.default is inspect.Parameter.empty


def load_component(folder: Path, name: str, entry: list, *, torch_dtype, variant, use_safetensors, allow_pickle) -> Any:
    """Component ``name`` of a pipeline folder as model_index.json names it (``variant``: already resolved for it)."""
    if not (isinstance(entry, list) and len(entry) == 2):
        raise ConfigError(f"{folder}/model_index.json: entry for {name!r} must be [library, class name], got {entry!r}")
    library, class_name = entry
    sub = folder / name
    if library in _TRANSFORMERS_LIBS:
        return _load_transformers(sub, class_name, torch_dtype, variant)
    cls = _vidiff_class(class_name)
    if cls is None:
        raise ConfigError(
            f"{folder}/model_index.json: component {name!r} is a {library}.{class_name}, which vidiff does not provide; "
            f"pass {name}=<an object> to from_pretrained"
        )
    if hasattr(cls, "step") and hasattr(cls, "set_timesteps"):  # a scheduler
        return cls.from_pretrained(folder, subfolder=name)
    if not hasattr(cls, "from_pretrained"):
        raise ConfigError(f"vidiff.{class_name} cannot be loaded from a folder")
    return cls.from_pretrained(folder, subfolder=name, torch_dtype=torch_dtype, variant=variant, use_safetensors=use_safetensors, allow_pickle=allow_pickle)


def _load_transformers(sub: Path, class_name: str, torch_dtype, variant) -> Any:
    import transformers

    cls = getattr(transformers, class_name, None)
    if cls is None:
        raise ConfigError(f"{sub}: transformers has no class {class_name!r}; upgrade transformers")
    if not sub.is_dir():
        raise ConfigError(f"component folder {sub} is missing")
    if not issubclass(cls, torch.nn.Module):  # tokenizers, image processors
        return cls.from_pretrained(sub)
    fast = load_clip(cls, sub, torch_dtype, variant)
    if fast is not None:
        return fast
    kwargs: dict[str, Any] = {}
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    if variant is not None:
        kwargs["variant"] = variant
    return cls.from_pretrained(sub, **kwargs)


def save_pipeline(pipe: Any, directory: Path, *, safe_serialization: bool = True, variant: str | None = None, **kwargs: Any) -> None:
    from .. import __version__

    if directory.is_file():
        raise ConfigError(f"{directory} is a file; save_pretrained needs a directory")
    directory.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {"_class_name": type(pipe).__name__, "_diffusers_version": DIFFUSERS_FORMAT_VERSION, "_vidiff_version": __version__}
    for name, module in pipe.components.items():
        index[name] = component_entry(module)
        if module is None:
            continue
        target = directory / name
        if hasattr(module, "set_timesteps"):
            module.save_pretrained(target)
        elif isinstance(module, torch.nn.Module):
            module.save_pretrained(target, safe_serialization=safe_serialization, variant=variant, **kwargs)
        else:
            module.save_pretrained(target)
    write_json_atomic(directory / "model_index.json", index)
