"""DiffusionPipeline: components, loading/saving, devices, progress, and the one shared denoising loop.

A pipeline subclass declares its components in ``__init__``'s signature and calls
``self.register_modules(...)``; its ``__call__`` is a short composition of stage functions around
:meth:`DiffusionPipeline.denoise`, which owns guidance-free bookkeeping (callbacks, progress bar,
interruption, the NaN guard).
"""

from __future__ import annotations

import inspect
import logging
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from tqdm.auto import tqdm

from ..runtime import offload as _offload
from ..runtime import stream as _stream
from ..runtime.memory import release_free_memory

logger = logging.getLogger("vidiff")


class NonFiniteError(FloatingPointError):
    """Denoising produced NaN or infinity; raised instead of returning a black video."""


class DiffusionPipeline:
    """Base of every vidiff pipeline (and the auto-loader: ``DiffusionPipeline.from_pretrained(path)``)."""

    model_cpu_offload_seq: ClassVar[str] = ""
    _optional_components: ClassVar[tuple[str, ...]] = ()
    _exclude_from_cpu_offload: ClassVar[tuple[str, ...]] = ()
    _callback_tensor_inputs: ClassVar[tuple[str, ...]] = ("latents",)

    # ------------------------------------------------------------------ components
    def register_modules(self, **modules: Any) -> None:
        names = list(getattr(self, "_component_names", []))
        for name, module in modules.items():
            setattr(self, name, module)
            if name not in names:
                names.append(name)
        self._component_names = names

    @classmethod
    def component_names(cls) -> list[str]:
        """The components ``__init__`` takes, in order."""
        params = inspect.signature(cls.__init__).parameters
        return [n for n, p in params.items() if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]

    @property
    def components(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in getattr(self, "_component_names", [])}

    def _modules(self) -> dict[str, nn.Module]:
        return {n: m for n, m in self.components.items() if isinstance(m, nn.Module)}

    @property
    def config(self) -> dict[str, Any]:
        """model_index.json contents: component name -> [library, class name]."""
        from ..loading.model_index import component_entry

        return {name: component_entry(module) for name, module in self.components.items()}

    # ------------------------------------------------------------------ loading / saving
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> "DiffusionPipeline":
        """Load a diffusers-format pipeline folder or hub id.

        Keyword arguments: torch_dtype, variant, use_safetensors, local_files_only, revision, cache_dir,
        token, force_download, allow_pickle, and component overrides by name (``unet=...``,
        ``motion_adapter=...``, ``safety_checker=None``).
        """
        from ..loading.model_index import load_pipeline

        return load_pipeline(cls, pretrained_model_name_or_path, **kwargs)

    @classmethod
    def _load_component(cls, folder: Path, name: str, entry: list, passed: dict[str, Any], **kwargs: Any) -> Any:
        """Load component ``name`` of ``folder`` (``entry``: its model_index.json [library, class]); ``passed``: the
        components given to from_pretrained. A pipeline overrides this to load a component its own way."""
        from ..loading.model_index import load_component

        return load_component(folder, name, entry, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, safe_serialization: bool = True, variant: str | None = None, **kwargs: Any) -> None:
        from ..loading.model_index import save_pipeline

        save_pipeline(self, Path(save_directory), safe_serialization=safe_serialization, variant=variant, **kwargs)

    # ------------------------------------------------------------------ devices
    def to(self, *args: Any, **kwargs: Any) -> "DiffusionPipeline":
        """``pipe.to("cuda")``, ``pipe.to(torch.float16)``, ``pipe.to("cuda", torch.float16)``."""
        if getattr(self, "_offload_hooks", None):
            raise RuntimeError("this pipeline uses CPU offload; it moves components itself. Call pipe.remove_all_hooks() before pipe.to(...)")
        for module in self._modules().values():
            module.to(*args, **kwargs)
        return self

    @property
    def device(self) -> torch.device:
        for module in self._modules().values():
            return getattr(module, "device", None) or next(module.parameters()).device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for module in self._modules().values():
            return getattr(module, "dtype", None) or next(module.parameters()).dtype
        return torch.float32

    @property
    def _execution_device(self) -> torch.device:
        return getattr(self, "_offload_device", None) or self.device

    def enable_model_cpu_offload(self, gpu_id: int | None = None, device: torch.device | str | None = None) -> None:
        """Keep each component on the accelerator only while it runs (order: ``model_cpu_offload_seq``)."""
        target = _offload.accelerator_device(gpu_id, device)
        if target is None:
            logger.warning("vidiff: no accelerator found; enable_model_cpu_offload() does nothing and the run stays on the CPU.")
            return
        self.remove_all_hooks()
        seq = [s for s in self.model_cpu_offload_seq.split("->") if s]
        self._offload_hooks = _offload.enable_model_cpu_offload(self.components, seq, target, self._exclude_from_cpu_offload)
        self._offload_device = target

    def enable_sequential_cpu_offload(self, gpu_id: int | None = None, device: torch.device | str | None = None) -> None:
        """Move each leaf module's weights to the accelerator just for its forward (lowest memory, slowest)."""
        target = _offload.accelerator_device(gpu_id, device)
        if target is None:
            logger.warning("vidiff: no accelerator found; enable_sequential_cpu_offload() does nothing and the run stays on the CPU.")
            return
        self.remove_all_hooks()
        self._offload_hooks = _offload.enable_sequential_cpu_offload(self.components, target, self._exclude_from_cpu_offload)
        self._offload_device = target

    def remove_all_hooks(self) -> None:
        for hook in getattr(self, "_offload_hooks", None) or []:
            hook.remove()
        self._offload_hooks = []
        self._offload_device = None

    def maybe_free_model_hooks(self) -> None:
        """After a call with model offload, send the last component home."""
        hooks = getattr(self, "_offload_hooks", None) or []
        for hook in hooks:
            if isinstance(hook, _offload.ModelOffloadHook):
                hook.offload()

    # ------------------------------------------------------------------ memory toggles
    def _vae(self) -> nn.Module:
        vae = getattr(self, "vae", None)
        if vae is None:
            raise AttributeError(f"{type(self).__name__} has no vae")
        return vae

    def enable_vae_slicing(self) -> None:
        """Decode the frames one at a time (lower peak memory, same frames)."""
        self._vae().enable_slicing()

    def disable_vae_slicing(self) -> None:
        self._vae().disable_slicing()

    def enable_vae_tiling(self) -> None:
        """Decode large frames in overlapping tiles (lower peak memory at high resolution)."""
        self._vae().enable_tiling()

    def disable_vae_tiling(self) -> None:
        self._vae().disable_tiling()

    def enable_attention_slicing(self, slice_size: str | int | None = "auto") -> None:
        """Compute attention in slices of heads (lower peak memory)."""
        for module in self._modules().values():
            if hasattr(module, "set_attention_slice"):
                module.set_attention_slice(slice_size)

    def disable_attention_slicing(self) -> None:
        self.enable_attention_slicing(None)

    def enable_weight_streaming(self) -> None:
        """CPU runs: each layer's memory-mapped weights stay resident only while it runs (they wait in the page
        cache in between), so the peak memory is about the activations and a batch of layers; same frames, up to
        about 10% slower (:mod:`vidiff.runtime.stream`). Linux only; elsewhere a warning says the weights stay."""
        streaming = self.__dict__.setdefault("_streaming", {})
        for name, module in self._modules().items():
            if name in streaming and streaming[name].model is module:
                continue
            if name in streaming:  # the component was replaced: its hooks stay with the old module
                streaming.pop(name).remove()
            hooks = _stream.enable_weight_streaming(module)
            if hooks is not None:
                streaming[name] = hooks

    def disable_weight_streaming(self) -> None:
        for hooks in getattr(self, "_streaming", {}).values():
            hooks.remove()
        self._streaming = {}

    def enable_forward_chunking(self, chunk_size: int | None = None, dim: int = 0) -> None:
        self.unet.enable_forward_chunking(chunk_size=chunk_size, dim=dim)

    def disable_forward_chunking(self) -> None:
        self.unet.disable_forward_chunking()

    # ------------------------------------------------------------------ progress / interruption
    def progress_bar(self, iterable: Iterable | None = None, total: int | None = None) -> tqdm:
        config = dict(getattr(self, "_progress_bar_config", {}))
        if iterable is not None:
            return tqdm(iterable, **config)
        if total is not None:
            return tqdm(total=total, **config)
        raise ValueError("progress_bar needs `total` or `iterable`")

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        self._progress_bar_config = kwargs

    @property
    def interrupt(self) -> bool:
        return getattr(self, "_interrupt", False)

    @property
    def num_timesteps(self) -> int:
        return getattr(self, "_num_timesteps", 0)

    # ------------------------------------------------------------------ the denoising loop
    def denoise(
        self,
        state: dict[str, Any],
        timesteps: torch.Tensor,
        step: Callable[[int, torch.Tensor, dict[str, Any]], torch.Tensor],
        *,
        num_inference_steps: int,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: Iterable[str] = ("latents",),
        callback: Callable | None = None,
        callback_steps: int = 1,
    ) -> dict[str, Any]:
        """Run ``step(i, t, state) -> new latents`` over ``timesteps``.

        ``state`` holds ``latents`` and any tensor a callback may read or replace (``prompt_embeds``...).
        ``callback_on_step_end(pipe, i, t, {name: tensor})`` may return replacements; ``pipe._interrupt = True``
        inside it stops the loop. Non-finite latents raise :class:`NonFiniteError` naming the step.
        """
        order = getattr(self.scheduler, "order", 1)
        num_warmup = len(timesteps) - num_inference_steps * order
        self._num_timesteps = len(timesteps)
        self._interrupt = False
        release_free_memory()  # what the encoders freed goes back before the denoiser's activations
        with self.progress_bar(total=num_inference_steps) as bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                latents = step(i, t, state)
                check_finite(latents, i, t)
                state["latents"] = latents
                if callback_on_step_end is not None:
                    kwargs = {k: state[k] for k in callback_on_step_end_tensor_inputs}
                    out = callback_on_step_end(self, i, t, kwargs) or {}
                    state.update({k: v for k, v in out.items() if k in state})
                if i == len(timesteps) - 1 or (i + 1 > num_warmup and (i + 1) % order == 0):
                    bar.update()
                    if callback is not None and i % callback_steps == 0:
                        callback(i // order, t, state["latents"])
        return state

    def check_callback_inputs(self, callback_on_step_end_tensor_inputs: Iterable[str] | None, callback_steps: Any = 1) -> None:
        names = list(callback_on_step_end_tensor_inputs or [])
        bad = [k for k in names if k not in self._callback_tensor_inputs]
        if bad:
            raise ValueError(f"callback_on_step_end_tensor_inputs {bad} are not available; choose from {list(self._callback_tensor_inputs)}")
        if callback_steps is not None and (not isinstance(callback_steps, int) or callback_steps <= 0):
            raise ValueError(f"callback_steps must be a positive integer, got {callback_steps!r}")

    def scheduler_step_kwargs(self, generator: Any, eta: float) -> dict[str, Any]:
        """Pass ``eta``/``generator`` to ``scheduler.step`` only where it accepts them (as the reference does)."""
        params = inspect.signature(self.scheduler.step).parameters
        out: dict[str, Any] = {}
        if "eta" in params:
            out["eta"] = eta
        elif eta not in (0, 0.0, None):
            raise ValueError(f"eta={eta} is only used by DDIM-type schedulers; {type(self.scheduler).__name__}.step does not take it. Use eta=0.0 or a DDIMScheduler")
        if "generator" in params:
            out["generator"] = generator
        return out

    def __repr__(self) -> str:
        parts = ", ".join(f"{n}={type(m).__name__ if m is not None else None}" for n, m in self.components.items())
        return f"{type(self).__name__}({parts})"


def check_finite(latents: torch.Tensor, i: int, t: Any) -> None:
    if not torch.isfinite(latents).all():
        t_val = t.item() if isinstance(t, torch.Tensor) else t
        raise NonFiniteError(
            f"denoising step {i} (timestep {t_val}) produced NaN/inf latents. In float16 try torch_dtype=torch.bfloat16 "
            "or float32, check the scheduler config, or lower guidance_scale."
        )


def cfg_combine(noise_pred: torch.Tensor, guidance_scale: float | torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance on a batch laid out [uncond, cond]."""
    uncond, cond = noise_pred.chunk(2)
    return uncond + guidance_scale * (cond - uncond)


def check_guidance(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


def check_positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_size(height: int, width: int, multiple: int = 8) -> None:
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0 or v % multiple:
            raise ValueError(f"{name} must be a positive multiple of {multiple}, got {v!r}; round it, e.g. {max(multiple, (int(v) // multiple) * multiple) if isinstance(v, (int, float)) else 256}")


def check_generator(generator: Any, batch_size: int) -> None:
    if isinstance(generator, list) and len(generator) != batch_size:
        raise ValueError(f"got a list of {len(generator)} generators for an effective batch of {batch_size}; pass one generator or a list of {batch_size}")


def legacy_callback_kwargs(kwargs: dict[str, Any], name: str) -> tuple[Callable | None, int | None]:
    """The reference's deprecated ``callback`` / ``callback_steps`` keyword arguments; anything else is refused."""
    callback, callback_steps = kwargs.pop("callback", None), kwargs.pop("callback_steps", None)
    if kwargs:
        raise TypeError(f"{name}.__call__ got unexpected keyword arguments {sorted(kwargs)}")
    if callback is not None or callback_steps is not None:
        logger.warning("`callback` and `callback_steps` are deprecated; use callback_on_step_end")
    return callback, callback_steps


def check_latents(latents: torch.Tensor | None, shape: tuple[int, ...], layout: str = "for this batch, frame count and size",
                  finite: bool = True) -> None:
    """User latents (None: drawn later) must be a tensor of ``shape`` (``layout`` says what it holds), finite if asked."""
    if latents is None:
        return
    if not isinstance(latents, torch.Tensor):
        raise TypeError(f"latents must be a torch.Tensor, got {type(latents).__name__}")
    if tuple(latents.shape) != tuple(shape):
        raise ValueError(f"latents have shape {tuple(latents.shape)}, expected {tuple(shape)} {layout}")
    if finite and not torch.isfinite(latents).all():
        raise ValueError("latents contain NaN or infinity")

