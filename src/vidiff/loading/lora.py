"""LoRA files in the diffusers format (AnimateDiff motion LoRAs, SD UNet LoRAs), loaded without peft.

Accepted keys, after the ``unet.`` prefix: the old diffusers names (``...attn1.processor.to_q_lora.down.weight``),
``...to_q.lora.down.weight`` / ``.lora.up.weight`` (the converted guoyww motion LoRAs), and peft's
``...to_q.lora_A.weight`` / ``.lora_B.weight``. Scales come from the file's ``lora_adapter_metadata`` (peft
``LoraConfig`` fields: r, lora_alpha, rank_pattern, alpha_pattern, use_rslora) or are 1, as in the reference.

``StableDiffusionLoraLoaderMixin`` gives a pipeline the reference's methods: ``load_lora_weights``,
``set_adapters``, ``fuse_lora``, ``unfuse_lora``, ``unload_lora_weights``, ``get_active_adapters``,
``get_list_adapters``, ``delete_adapters``, ``enable_lora`` / ``disable_lora``, ``set_lora_device``.
The layers themselves are adapted by :mod:`vidiff.layers.lora` (forward hooks; the state-dict keys do not change).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any

import torch

from ..layers.lora import SUPPORTED, LoraState
from . import hub
from .weights import load_state_dict

logger = logging.getLogger("vidiff")

LORA_WEIGHT_NAME = "pytorch_lora_weights.bin"
LORA_WEIGHT_NAME_SAFE = "pytorch_lora_weights.safetensors"
METADATA_KEY = "lora_adapter_metadata"
# the reference's UNET_TO_DIFFUSERS, applied after ".processor." -> "." (first match wins)
_KEY_MAP = (
    (".to_out_lora.up", ".to_out.0.lora_B"), (".to_out_lora.down", ".to_out.0.lora_A"),
    (".to_q_lora.down", ".to_q.lora_A"), (".to_q_lora.up", ".to_q.lora_B"),
    (".to_k_lora.down", ".to_k.lora_A"), (".to_k_lora.up", ".to_k.lora_B"),
    (".to_v_lora.down", ".to_v.lora_A"), (".to_v_lora.up", ".to_v.lora_B"),
    (".lora.up", ".lora_B"), (".lora.down", ".lora_A"),
)
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision")


# ---------------------------------------------------------------------------------------------- files


def _pick_weight_name(names: list[str], where: str, use_safetensors: bool | None = None) -> str:
    """The reference's best guess: a LoRA-named file if there is one, else the only (or first) weights file."""
    names = sorted(n for n in names if not any(s in n for s in ("scheduler", "optimizer", "checkpoint")))
    formats = ((".safetensors", LORA_WEIGHT_NAME_SAFE), (".bin", LORA_WEIGHT_NAME))
    formats = formats[:1] if use_safetensors else formats[1:] if use_safetensors is False else formats
    for ext, preferred in formats:
        found = [n for n in names if n.endswith(ext)]
        if any(n.endswith(preferred) for n in found):
            found = [n for n in found if n.endswith(preferred)]
        if found:
            if len(found) > 1:
                logger.warning("%s holds several %s files %s; loading %s (pass weight_name= to choose)", where, ext, found, found[0])
            return found[0]
    raise FileNotFoundError(f"{where} holds no LoRA weights (.safetensors or .bin); pass weight_name= or a file path")


def _lora_file(path_or_id: str | os.PathLike, weight_name: str | None, subfolder: str | None, use_safetensors: bool | None,
               hub_kwargs: dict) -> Path:
    path = Path(path_or_id)
    if path.is_file():
        return path
    if weight_name is None:
        files = hub.list_repo_files_cached(path_or_id, **hub_kwargs)
        prefix = f"{subfolder.strip('/')}/" if subfolder else ""
        names = [f[len(prefix):] for f in files if f.startswith(prefix) and "/" not in f[len(prefix):]]
        weight_name = _pick_weight_name(names, f"{path_or_id}/{subfolder or ''}".rstrip("/"), use_safetensors)
    return hub.resolve_file(path_or_id, weight_name, subfolder, **hub_kwargs)


def _file_metadata(path: Path) -> dict[str, Any] | None:
    if path.suffix != ".safetensors":
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        raw = (f.metadata() or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else None


def read_lora_file(path_or_dict: Any, weight_name: str | None = None, subfolder: str | None = None,
                   use_safetensors: bool | None = None, **hub_kwargs: Any) -> tuple[dict[str, torch.Tensor], dict | None]:
    """(state dict, adapter metadata) of a LoRA file, folder, hub id or in-memory state dict."""
    if isinstance(path_or_dict, dict):
        return dict(path_or_dict), None
    if not isinstance(path_or_dict, (str, os.PathLike)):
        raise TypeError(f"load_lora_weights takes a path, hub id or state dict, got {type(path_or_dict).__name__}")
    if use_safetensors and weight_name is not None and not str(weight_name).endswith(".safetensors"):
        raise ValueError(f"use_safetensors=True but weight_name={weight_name!r} is not a .safetensors file")
    path = _lora_file(path_or_dict, weight_name, subfolder, use_safetensors, hub_kwargs)
    if use_safetensors and path.suffix != ".safetensors":
        raise FileNotFoundError(f"use_safetensors=True but the LoRA weights found are {path.name}")
    return load_state_dict(path, allow_pickle=not use_safetensors), _file_metadata(path)


# ---------------------------------------------------------------------------------------------- keys -> layers


def _peft_key(key: str) -> str:
    key = key.replace(".processor.", ".")
    for old, new in _KEY_MAP:
        if old in key:
            return key.replace(old, new)
    return key


def split_components(state_dict: dict[str, torch.Tensor], metadata: dict | None) -> tuple[dict, dict | None]:
    """The UNet's part of a LoRA state dict (prefix removed, peft key names) and of its metadata."""
    keys = list(state_dict)
    if not keys:
        raise ValueError("the LoRA state dict is empty")
    if not all("lora" in k for k in keys):
        raise ValueError("Invalid LoRA checkpoint: every key must contain 'lora'; e.g. "
                         f"{[k for k in keys if 'lora' not in k][:3]}")
    if all(k.startswith(("lora_te_", "lora_unet_", "lora_te1_", "lora_te2_")) for k in keys):
        raise NotImplementedError("this is a Kohya / A1111-format LoRA (lora_unet_... keys); vidiff loads diffusers-format LoRAs "
                                  "(unet.<module>.lora...). Convert it with diffusers' lora_state_dict first.")
    if any(k.startswith("text_encoder") for k in keys):
        raise NotImplementedError("this LoRA has text-encoder weights (text_encoder.* keys); vidiff applies LoRAs to the UNet only")
    unet = {_peft_key(k[len("unet."):]): v for k, v in state_dict.items() if k.startswith("unet.")}
    if not unet:
        raise ValueError(f"no LoRA keys start with 'unet.' (e.g. {keys[:2]}); diffusers-format LoRA keys name the UNet module, "
                         "e.g. 'unet.down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.to_q.lora.down.weight'")
    if metadata is not None:
        metadata = {k[len("unet."):]: v for k, v in metadata.items() if k.startswith("unet.")} or None
    return unet, metadata


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """peft's rank_pattern / alpha_pattern lookup: a pattern matches the module path's tail."""
    for pattern, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


def _scaling(module: str, rank: int, metadata: dict | None) -> float:
    """alpha / r for one layer (alpha / sqrt(r) with use_rslora); 1 without metadata (alpha = r, the reference's rule)."""
    if not metadata:
        return 1.0
    if metadata.get("use_dora") or metadata.get("lora_bias"):
        raise NotImplementedError("DoRA and LoRA-bias adapters are not supported by vidiff")
    r = _pattern_value(metadata.get("rank_pattern"), module, metadata.get("r", rank))
    alpha = _pattern_value(metadata.get("alpha_pattern"), module, metadata.get("lora_alpha", r))
    if r != rank:
        raise ValueError(f"LoRA metadata says rank {r} for {module}, but its weights have rank {rank}")
    return alpha / math.sqrt(r) if metadata.get("use_rslora") else alpha / r


def lora_layers(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], metadata: dict | None) -> dict[str, tuple]:
    """{module path: (down, up, scaling)} for peft-named UNet keys, checked against ``model``'s layers."""
    dropped = [k for k in state_dict if "dora_scale" in k]
    if dropped:
        logger.warning("ignoring %d DoRA 'dora_scale' tensors (not supported), as the reference does", len(dropped))
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        if "dora_scale" in key:
            continue
        module, sep, rest = key.partition(".lora_")
        if not sep or rest not in ("A.weight", "B.weight"):
            raise ValueError(f"unsupported LoRA key {key!r}: expected <module>.lora_A.weight / .lora_B.weight "
                             "(or the diffusers .lora.down/.lora.up names)")
        pairs.setdefault(module, {})[rest[0]] = value
    modules = dict(model.named_modules())
    missing = sorted(m for m in pairs if m not in modules)
    if missing:
        raise ValueError(f"the LoRA targets {len(missing)} modules this {type(model).__name__} does not have, e.g. {missing[:3]}; "
                         "it was made for another base model (a motion LoRA needs the matching motion adapter)")
    layers = {}
    for module, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise ValueError(f"LoRA for {module} has only lora_{''.join(ab)}; both the down (A) and up (B) weights are needed")
        if not isinstance(modules[module], SUPPORTED):
            raise ValueError(f"LoRA targets {module}, a {type(modules[module]).__name__}; vidiff adapts Linear and Conv2d layers")
        layers[module] = (ab["A"], ab["B"], _scaling(module, ab["A"].shape[0], metadata))
    return layers


def load_lora_adapter(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], adapter_name: str | None = None,
                      metadata: dict | None = None) -> str:
    """Add a UNet LoRA (peft key names, no prefix) to ``model`` as ``adapter_name``; it becomes the active adapter."""
    state = LoraState.of(model)
    if adapter_name is not None and state is not None and adapter_name in state.adapters:
        raise ValueError(f"Adapter name {adapter_name} already in use in the model - please select a new adapter name "
                         f"(loaded: {state.adapters}), or delete_adapters({adapter_name!r}) first.")
    layers = lora_layers(model, state_dict, metadata)  # checks everything before touching the model
    state = LoraState.of(model, create=True)
    name = adapter_name if adapter_name is not None else state.default_name()
    state.add(name, layers)
    return name


# ---------------------------------------------------------------------------------------------- pipeline mixin


class StableDiffusionLoraLoaderMixin:
    """LoRA methods of the reference's SD pipelines, for the UNet (text-encoder LoRAs are refused)."""

    _lora_loadable_modules = ("unet", "text_encoder")

    @classmethod
    def lora_state_dict(cls, pretrained_model_name_or_path_or_dict, **kwargs: Any):
        """(state dict, network alphas) as stored; ``return_lora_metadata=True`` adds the adapter metadata."""
        return_metadata = kwargs.pop("return_lora_metadata", False)
        if kwargs.pop("proxies", None) is not None:
            raise ValueError("proxies are not supported; set HTTPS_PROXY in the environment instead")
        kwargs.pop("unet_config", None)
        hub_kwargs = {k: kwargs.pop(k) for k in _HUB_KWARGS if k in kwargs}
        weight_name, subfolder, use_safetensors = kwargs.pop("weight_name", None), kwargs.pop("subfolder", None), kwargs.pop("use_safetensors", None)
        if kwargs:
            raise TypeError(f"lora_state_dict got unexpected keyword arguments {sorted(kwargs)}")
        state_dict, metadata = read_lora_file(pretrained_model_name_or_path_or_dict, weight_name, subfolder, use_safetensors, **hub_kwargs)
        if any("dora_scale" in k for k in state_dict):
            logger.warning("ignoring DoRA 'dora_scale' tensors (not supported)")
            state_dict = {k: v for k, v in state_dict.items() if "dora_scale" not in k}
        return (state_dict, None, metadata) if return_metadata else (state_dict, None)

    def load_lora_weights(self, pretrained_model_name_or_path_or_dict, adapter_name: str | None = None, hotswap: bool = False,
                          **kwargs: Any) -> None:
        """Load a diffusers-format LoRA (file, folder, hub id or state dict) into the UNet as ``adapter_name``.

        Keyword arguments: weight_name, subfolder, use_safetensors, cache_dir, force_download, local_files_only,
        token, revision (and low_cpu_mem_usage, accepted: vidiff never initialises LoRA weights randomly).
        """
        if hotswap:
            raise NotImplementedError("hotswap=True is not supported; delete_adapters(name) and load the new LoRA instead")
        kwargs.pop("low_cpu_mem_usage", None)
        kwargs["return_lora_metadata"] = True
        state_dict, _, metadata = self.lora_state_dict(pretrained_model_name_or_path_or_dict, **kwargs)
        unet_state, unet_metadata = split_components(state_dict, metadata)
        load_lora_adapter(self.unet, unet_state, adapter_name, unet_metadata)

    def _lora(self, required: bool = True) -> LoraState | None:
        state = LoraState.of(self.unet)
        if state is None and required:
            raise ValueError("no LoRA is loaded; call pipe.load_lora_weights(...) first")
        return state

    def _check_components(self, components: Any) -> list[str]:
        components = list(components or [])
        if not components:
            raise ValueError("`components` cannot be an empty list.")
        bad = [c for c in components if c not in self._lora_loadable_modules]
        if bad:
            raise ValueError(f"{bad} cannot hold LoRAs; choose from {list(self._lora_loadable_modules)}")
        return components

    def set_adapters(self, adapter_names: list[str] | str, adapter_weights: float | list[float] | None = None) -> None:
        """Activate ``adapter_names`` (combined, in this order), each scaled by its weight (default 1.0)."""
        state = self._lora()
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        weights = adapter_weights if isinstance(adapter_weights, list) else [adapter_weights] * len(names)
        if len(weights) != len(names):
            raise ValueError(f"Length of adapter names {len(names)} is not equal to the length of the weights {len(weights)}")
        if any(isinstance(w, dict) for w in weights):
            raise NotImplementedError("per-block adapter weights (dicts) are not supported; pass one number per adapter")
        missing = [n for n in names if n not in state.adapters]
        if missing:
            raise ValueError(f"Adapter name(s) {missing} not in the list of present adapters: {state.adapters}.")
        state.activate(names, [1.0 if w is None else float(w) for w in weights])

    def get_active_adapters(self) -> list[str]:
        state = self._lora(required=False)
        return list(state.active) if state is not None else []

    def get_list_adapters(self) -> dict[str, list[str]]:
        state = self._lora(required=False)
        return {"unet": list(state.adapters)} if state is not None else {}

    def fuse_lora(self, components: list[str] = ("unet", "text_encoder"), lora_scale: float = 1.0, safe_fusing: bool = False,
                  adapter_names: list[str] | None = None, **kwargs: Any) -> None:
        """Add the active adapters (or ``adapter_names``), times ``lora_scale``, into the UNet's weights.

        As in the reference, ``lora_scale`` also stays on those adapters' scales afterwards."""
        self._check_components(components)
        state = self._lora()
        unknown = [n for n in adapter_names or [] if n not in state.adapters]
        if unknown:
            raise ValueError(f"adapter_names {unknown} are not loaded; loaded: {state.adapters}")
        for hook in state.hooks.values():
            if lora_scale != 1.0:
                for name in hook.active:
                    if name in hook.adapters:
                        hook.adapters[name].weight *= lora_scale
            hook.merge(adapter_names, safe=safe_fusing)

    def unfuse_lora(self, components: list[str] = ("unet", "text_encoder"), **kwargs: Any) -> None:
        """Subtract the fused adapters from the weights again."""
        self._check_components(components)
        state = self._lora(required=False)
        for hook in state.hooks.values() if state is not None else []:
            hook.unmerge()

    @property
    def num_fused_loras(self) -> int:
        state = self._lora(required=False)
        return len({n for h in state.hooks.values() for n in h.merged}) if state is not None else 0

    def unload_lora_weights(self) -> None:
        """Remove every LoRA; a fused LoRA's effect stays in the weights (unfuse_lora first to undo it)."""
        state = self._lora(required=False)
        if state is not None:
            state.unload()

    def delete_adapters(self, adapter_names: list[str] | str) -> None:
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        state = self._lora(required=False)
        if state is not None:
            state.delete(names)

    def disable_lora(self) -> None:
        self._lora().set_enabled(False)

    def enable_lora(self) -> None:
        self._lora().set_enabled(True)

    def set_lora_device(self, adapter_names: list[str], device: torch.device | str | int) -> None:
        for hook in self._lora().hooks.values():
            for name in adapter_names:
                adapter = hook.adapters.get(name)
                if adapter is not None:
                    for buffer in (adapter.a_buffer, adapter.b_buffer):
                        setattr(hook.layer, buffer, getattr(hook.layer, buffer).to(device))

    @property
    def lora_scale(self) -> float:
        return getattr(self, "_lora_scale", 1.0)
