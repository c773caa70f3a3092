"""Typed configs whose fields are the config.json keys, and the mixin that loads and saves them.

Every model and scheduler class declares ``config_class``: a dataclass subclass of :class:`Config`
whose field names and defaults are the diffusers config keys. ``obj.config`` is that dataclass; it
reads as an attribute (``unet.config.in_channels``) and as a mapping (``scheduler.config["beta_start"]``,
``dict(config)``, ``from_config(other.config)``), like the reference's FrozenDict.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, get_type_hints

logger = logging.getLogger(__name__)

# The diffusers release whose on-disk format vidiff writes (``_diffusers_version`` in config files).
DIFFUSERS_FORMAT_VERSION = "0.42.1"

# Keys that describe a file rather than the object; never fields, never reported as unknown.
_META_KEYS = ("_class_name", "_diffusers_version", "_name_or_path", "_use_default_values", "_vidiff_version")


class ConfigError(ValueError):
    """A config file or config argument is missing, malformed or contradictory."""


@dataclasses.dataclass
class Config(Mapping):
    """Base for typed configs. Subclasses are dataclasses whose fields are the config.json keys."""

    # --- mapping interface (read-only view over the fields) ---
    def __getitem__(self, key: str) -> Any:
        if key in self._field_names():
            return getattr(self, key)
        raise KeyError(key)

    def __iter__(self):
        return iter(self._field_names())

    def __len__(self) -> int:
        return len(self._field_names())

    def __contains__(self, key: object) -> bool:
        return key in self._field_names()

    # dataclass eq compares fields; keep Mapping's hash-less semantics
    __hash__ = None  # type: ignore[assignment]

    @classmethod
    def _field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None = None, *, strict: bool = False, **overrides: Any) -> "Config":
        """Build from a config.json dict plus overrides.

        Unknown keys are ignored with one debug line (newer checkpoints add keys); with ``strict=True``
        (direct construction by a user) they are an error, since a misspelt argument must not vanish.
        """
        merged = {k: v for k, v in dict(values or {}).items() if k not in _META_KEYS}
        unknown_from_file = [k for k in merged if k not in cls._field_names()]
        merged.update(overrides)
        names = set(cls._field_names())
        unknown_overrides = [k for k in overrides if k not in names and k not in _META_KEYS]
        if strict and unknown_overrides:
            raise TypeError(
                f"{cls.__name__} got unexpected argument(s) {sorted(unknown_overrides)}; "
                f"accepted keys are: {sorted(names)}"
            )
        unknown = sorted(set(unknown_from_file) | set(unknown_overrides))
        if unknown:
            logger.debug("%s: ignoring config keys it does not use: %s", cls.__name__, unknown)
        hints = get_type_hints(cls)
        kwargs = {k: _coerce(v, hints.get(k)) for k, v in merged.items() if k in names}
        try:
            cfg = cls(**kwargs)
        except TypeError as e:  # a required field without default is missing
            raise ConfigError(f"{cls.__name__}: {e}. The config file lacks a required key.") from None
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise ConfigError on contradictory values. Subclasses extend."""

    def to_dict(self) -> dict[str, Any]:
        return {name: _jsonable(getattr(self, name)) for name in self._field_names()}

    def replace(self, **changes: Any) -> "Config":
        return self.from_dict(self.to_dict(), strict=True, **changes)


def _coerce(value: Any, hint: Any) -> Any:
    """Lists from JSON become tuples where the field is a tuple, so configs hash and compare cleanly."""
    if isinstance(value, list) and hint is not None and "tuple" in str(hint).lower():
        return tuple(tuple(v) if isinstance(v, list) else v for v in value)
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a UTF-8 text file; expected a JSON config") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        head = text.lstrip()[:15].lower()
        hint = " (it looks like an HTML page: a download went wrong)" if head.startswith(("<!doctype", "<html")) else ""
        raise ConfigError(f"{path} is not valid JSON{hint}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def write_json_atomic(path: str | os.PathLike, data: Mapping[str, Any]) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_jsonable(dict(data)), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class ConfigMixin:
    """Config handling shared by models and schedulers.

    A class sets ``config_class`` and ``config_name``; its ``__init__`` calls ``self.register_config(...)``.
    """

    config_class: ClassVar[type[Config]] = Config
    config_name: ClassVar[str] = "config.json"
    _config: Config

    def register_config(self, config: Config | Mapping[str, Any] | None, kwargs: Mapping[str, Any]) -> Config:
        """Merge a config object or dict with keyword arguments, validate, store and return it."""
        if isinstance(config, self.config_class) and not kwargs:
            cfg = config
        elif config is None:
            cfg = self.config_class.from_dict(None, strict=True, **kwargs)
        elif isinstance(config, Mapping):
            cfg = self.config_class.from_dict(dict(config), **kwargs)
        else:
            raise TypeError(f"{type(self).__name__}: config must be a {self.config_class.__name__} or a dict, got {type(config).__name__}")
        object.__setattr__(self, "_config", cfg)
        return cfg

    @property
    def config(self) -> Config:
        return self._config

    @classmethod
    def from_config(cls, config: Config | Mapping[str, Any] | None = None, **overrides: Any):
        """Build a fresh object from a config (any Mapping: ours, a dict, or the reference's FrozenDict)."""
        values = dict(config or {})
        values.update(overrides)
        return cls(cls.config_class.from_dict(values))

    @classmethod
    def load_config(cls, pretrained_model_name_or_path: str | os.PathLike, subfolder: str | None = None, **hub_kwargs: Any) -> dict[str, Any]:
        from .loading.hub import resolve_file

        path = resolve_file(pretrained_model_name_or_path, cls.config_name, subfolder=subfolder, **hub_kwargs)
        return read_json(path)

    def config_dict_for_saving(self) -> dict[str, Any]:
        from . import __version__

        out = self.config.to_dict()
        out["_class_name"] = type(self).__name__
        out["_diffusers_version"] = DIFFUSERS_FORMAT_VERSION
        out["_vidiff_version"] = __version__
        return out

    def save_config(self, save_directory: str | os.PathLike) -> Path:
        save_directory = Path(save_directory)
        if save_directory.is_file():
            raise ConfigError(f"{save_directory} is a file; save_config needs a directory")
        save_directory.mkdir(parents=True, exist_ok=True)
        path = save_directory / self.config_name
        write_json_atomic(path, self.config_dict_for_saving())
        return path
