"""ModelMixin: the base of every vidiff model (config + from_pretrained/save_pretrained).

Subclass pattern::

    @dataclass
    class MyConfig(Config):
        in_channels: int = 4
        block_out_channels: tuple[int, ...] = (320, 640)

    class MyModel(ModelMixin):
        config_class = MyConfig

        def __init__(self, config: MyConfig | None = None, **kwargs):
            super().__init__()
            cfg = self.register_config(config, kwargs)
            self.conv_in = nn.Conv2d(cfg.in_channels, ...)

Loading builds the model on the meta device and assigns the checkpoint's tensors (no random init, one
copy of the weights). A model whose ``__init__`` computes buffers that are not saved
(``persistent=False``) re-creates them in :meth:`ModelMixin._init_non_persistent_buffers`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ..configuration import ConfigError, ConfigMixin

logger = logging.getLogger(__name__)

# diffusers from_pretrained arguments that only matter there: accepted and ignored.
_IGNORED_KWARGS = ("proxies", "user_agent", "mirror", "disable_mmap", "offload_state_dict", "resume_download", "from_flax")
# diffusers from_pretrained arguments for features vidiff does not have: refused unless left at their default.
_UNSUPPORTED_KWARGS = {
    "quantization_config": None, "max_memory": None, "offload_folder": None, "ignore_mismatched_sizes": False,
    "use_flashpack": False, "parallel_config": None,
}
_RENAMED_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _check_dtype(torch_dtype: Any) -> torch.dtype | None:
    if torch_dtype is None or isinstance(torch_dtype, torch.dtype):
        if torch_dtype is not None and not torch_dtype.is_floating_point:
            raise TypeError(f"torch_dtype must be a floating dtype such as torch.float16, got {torch_dtype}")
        return torch_dtype
    if isinstance(torch_dtype, str) and isinstance(getattr(torch, torch_dtype.removeprefix("torch."), None), torch.dtype):
        return _check_dtype(getattr(torch, torch_dtype.removeprefix("torch.")))
    raise TypeError(f"torch_dtype must be a torch.dtype such as torch.float16 (or its name), got {torch_dtype!r}")


def _check_device_map(device_map: Any) -> None:
    if device_map is None or str(device_map) == "cpu" or device_map == {"": "cpu"}:
        return
    raise ValueError(
        f"device_map={device_map!r} is not supported: vidiff loads on the CPU. Load without device_map and call "
        "model.to('cuda'), or use the pipeline's enable_model_cpu_offload()."
    )


def _pop_diffusers_only_kwargs(cls_name: str, kwargs: dict[str, Any]) -> None:
    for name in _IGNORED_KWARGS:
        if name in kwargs:
            logger.debug("%s.from_pretrained: ignoring %s=%r", cls_name, name, kwargs.pop(name))
    for name, default in _UNSUPPORTED_KWARGS.items():
        if name in kwargs and kwargs.pop(name) != default:
            raise NotImplementedError(f"{cls_name}.from_pretrained: {name} is not supported by vidiff; leave it unset")


class ModelMixin(nn.Module, ConfigMixin):
    config_name = "config.json"
    # As in diffusers: module names (e.g. "norm") kept in float32 when loading with torch_dtype.
    _keep_in_fp32_modules: ClassVar[list[str] | None] = None
    # Regexes of checkpoint keys that may be present without a matching model tensor (dropped silently).
    _keys_to_ignore_on_load_unexpected: ClassVar[list[str] | None] = None
    # Weight file prefix: diffusion_pytorch_model[.variant].safetensors
    _weights_prefix: ClassVar[str] = "diffusion_pytorch_model"

    @property
    def dtype(self) -> torch.dtype:
        for p in self.parameters():
            return p.dtype
        return torch.get_default_dtype()

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        subfolder: str | None = None,
        torch_dtype: torch.dtype | None = None,
        variant: str | None = None,
        use_safetensors: bool | None = None,
        local_files_only: bool | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        token: str | bool | None = None,
        force_download: bool = False,
        allow_pickle: bool = False,
        device_map: Any = None,
        low_cpu_mem_usage: bool = True,
        output_loading_info: bool = False,
        **config_overrides: Any,
    ):
        """Load a diffusers-format model folder (or hub id): config.json + safetensors weights.

        Arguments follow diffusers. ``variant="fp16"`` loads ``diffusion_pytorch_model.fp16.safetensors``
        (or its shards) and is an error listing the files when absent. ``torch_dtype`` casts floating
        weights as they are read (``_keep_in_fp32_modules`` stay float32); without it weights load as
        float32 like the reference. Pickle ``.bin`` weights are refused unless ``allow_pickle=True`` (then
        read with ``torch.load(weights_only=True)``). Keys missing from the checkpoint, extra keys and
        shape mismatches raise one :class:`~vidiff.loading.errors.CheckpointError` listing them all.
        ``device_map`` may only be None or "cpu"; ``low_cpu_mem_usage`` is accepted (loading is always
        meta-device + assign). Other keyword arguments override config.json entries. The model is
        returned in eval mode.
        """
        from ..loading.checkpoint import build_on_meta, load_into_model, resolve_weight_files

        torch_dtype = _check_dtype(config_overrides.pop("dtype", None) or torch_dtype)
        _check_device_map(device_map)
        _pop_diffusers_only_kwargs(cls.__name__, config_overrides)
        if not low_cpu_mem_usage:
            logger.debug("%s.from_pretrained: low_cpu_mem_usage=False has no effect; loading is always meta + assign", cls.__name__)
        hub_kwargs = dict(revision=revision, cache_dir=cache_dir, local_files_only=local_files_only, token=token, force_download=force_download)

        config_dict = cls.load_config(pretrained_model_name_or_path, subfolder=subfolder, **hub_kwargs)
        config = cls._config_for_loading(config_dict, config_overrides)
        files = resolve_weight_files(
            pretrained_model_name_or_path, subfolder, prefix=cls._weights_prefix, variant=variant,
            use_safetensors=use_safetensors, allow_pickle=allow_pickle, **hub_kwargs,
        )
        model = build_on_meta(cls, config)
        source = str(files[0].parent)
        load_into_model(model, files, torch_dtype=torch_dtype, allow_pickle=allow_pickle, source=source)
        object.__setattr__(model.config, "_name_or_path", os.fspath(pretrained_model_name_or_path))
        model.eval()
        if output_loading_info:
            return model, {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
        return model

    @classmethod
    def _config_for_loading(cls, config_dict: dict[str, Any], overrides: dict[str, Any]):
        name = config_dict.get("_class_name")
        if name is not None and name != cls.__name__:
            logger.debug("config.json names class %s; loading it as %s", name, cls.__name__)
        try:
            return cls.config_class.from_dict(config_dict, strict=True, **overrides)
        except TypeError as e:
            raise TypeError(f"{cls.__name__}.from_pretrained: {e}") from None

    def _init_non_persistent_buffers(self) -> None:
        """Re-create buffers that are not in checkpoints (``persistent=False``) after a meta-device load.

        Default: call ``_init_non_persistent_buffers()`` on every submodule that defines one (so a layer
        owning such a buffer can rebuild it). Override in a model whose own buffers need it.
        """
        for module in self.modules():
            hook = getattr(type(module), "_init_non_persistent_buffers", None)
            if module is self or hook is None or hook is ModelMixin._init_non_persistent_buffers:
                continue
            if any(b is not None and b.is_meta for b in module.buffers()):
                module._init_non_persistent_buffers()

    def _fix_state_dict_keys_on_load(self, state_dict: dict[str, Any]) -> None:
        """Rename old checkpoint keys in place (only keys; values are left as they are).

        Default, as in diffusers: attention blocks built with ``_from_deprecated_attn_block=True`` accept
        the old ``query/key/value/proj_attn`` names for ``to_q/to_k/to_v/to_out.0``.
        """
        for path, module in self.named_modules():
            if not getattr(module, "_from_deprecated_attn_block", False):
                continue
            for old, new in _RENAMED_ATTN.items():
                for kind in ("weight", "bias"):
                    key = f"{path}.{old}.{kind}" if path else f"{old}.{kind}"
                    if key in state_dict:
                        state_dict[key.removesuffix(f"{old}.{kind}") + f"{new}.{kind}"] = state_dict.pop(key)

    # ------------------------------------------------------------------ saving
    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        is_main_process: bool = True,
        save_function: Any = None,
        safe_serialization: bool = True,
        variant: str | None = None,
        max_shard_size: int | str = "10GB",
        push_to_hub: bool = False,
        **kwargs: Any,
    ) -> None:
        """Write config.json and the weights as diffusers does (loadable by diffusers and vidiff).

        ``variant="fp16"`` names the files ``diffusion_pytorch_model.fp16.safetensors`` (the tensors keep
        their dtype: call ``.half()`` first for real fp16 weights). Above ``max_shard_size`` the weights
        are split into shards with an ``.index.json``. ``safe_serialization=False`` writes a ``.bin`` pickle.
        """
        from ..loading.weights import save_state_dict

        if push_to_hub:
            raise NotImplementedError("push_to_hub is not supported: save to a folder, then use huggingface_hub.upload_folder")
        if save_function is not None or kwargs:
            logger.debug("save_pretrained: ignoring %s", sorted(kwargs) + (["save_function"] if save_function else []))
        save_directory = Path(save_directory)
        if save_directory.is_file():
            raise ConfigError(f"{save_directory} is a file; save_pretrained needs a directory")
        on_meta = [n for n, t in self.state_dict().items() if t.is_meta]
        if on_meta:
            raise ValueError(f"{type(self).__name__} still has tensors on the meta device ({on_meta[:5]}); load weights before saving")
        if is_main_process:
            self.save_config(save_directory)
        save_state_dict(
            self.state_dict(), save_directory, prefix=self._weights_prefix, variant=variant,
            max_shard_size=max_shard_size, safe_serialization=safe_serialization,
        )
