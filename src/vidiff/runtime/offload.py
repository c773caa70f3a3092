"""Model CPU offload: each component sits on the accelerator only while it runs.

Applied explicitly to a pipeline's modules (``pipe.enable_model_cpu_offload()``); nothing global.
On a machine with no accelerator the call is accepted, the run stays on the CPU, and one line says so.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

logger = logging.getLogger("vidiff")


def accelerator_device(gpu_id: int | None = None, device: torch.device | str | None = None) -> torch.device | None:
    """The accelerator to offload to, or None when this machine has none."""
    if device is not None:
        device = torch.device(device)
        if device.type == "cpu":
            return None
        if gpu_id is not None and device.index is not None and device.index != gpu_id:
            raise ValueError(f"gpu_id={gpu_id} contradicts device={device}; pass one of them")
        return torch.device(device.type, gpu_id if gpu_id is not None else (device.index or 0))
    for kind in ("cuda", "xpu", "mps"):
        backend = getattr(torch, kind, None)
        if backend is not None and hasattr(backend, "is_available") and backend.is_available():
            return torch.device(kind, gpu_id or 0) if kind != "mps" else torch.device("mps")
    return None


class ModelOffloadHook:
    """A forward pre-hook that brings its module onto ``device`` and sends the previous one home."""

    # entry points besides forward that pipelines call directly (the VAE's encode/decode)
    ENTRY_METHODS = ("encode", "decode")

    def __init__(self, module: nn.Module, device: torch.device, previous: "ModelOffloadHook | None"):
        self.module, self.device, self.previous = module, device, previous
        self.handle = module.register_forward_pre_hook(self)
        self.wrapped = [m for m in self.ENTRY_METHODS if callable(getattr(module, m, None))]
        for name in self.wrapped:
            setattr(module, name, self._onload_before(getattr(module, name)))

    def _onload_before(self, method):
        def call(*args, **kwargs):
            self(self.module, args)
            return method(*args, **kwargs)

        return call

    def __call__(self, module: nn.Module, args) -> None:
        if self.previous is not None:
            self.previous.offload()
        module.to(self.device)

    def offload(self) -> None:
        self.module.to("cpu")

    def remove(self) -> None:
        self.handle.remove()
        for name in self.wrapped:
            self.module.__dict__.pop(name, None)


def enable_model_cpu_offload(
    components: dict[str, object], sequence: Sequence[str], device: torch.device, exclude: Sequence[str] = ()
) -> list[ModelOffloadHook]:
    """Install a chain of hooks in pipeline order; returns them so they can be removed."""
    hooks: list[ModelOffloadHook] = []
    previous = None
    ordered = [n for n in sequence if isinstance(components.get(n), nn.Module)]
    rest = [n for n, m in components.items() if isinstance(m, nn.Module) and n not in ordered and n not in exclude]
    for name in ordered + rest:
        module = components[name]
        module.to("cpu")
        hook = ModelOffloadHook(module, device, previous)
        hooks.append(hook)
        previous = hook
    return hooks


def enable_sequential_cpu_offload(components: dict[str, object], device: torch.device, exclude: Sequence[str] = ()) -> list:
    """Weights of every leaf module go to the accelerator just for that leaf's forward, then back."""
    handles = []
    for name, module in components.items():
        if not isinstance(module, nn.Module) or name in exclude:
            continue
        module.to("cpu")
        for leaf in module.modules():
            if next(leaf.children(), None) is not None or not any(True for _ in leaf.parameters(recurse=False)):
                continue
            handles.append(leaf.register_forward_pre_hook(_onload_leaf(device)))
            handles.append(leaf.register_forward_hook(_offload_leaf))
    return handles


def _onload_leaf(device: torch.device):
    def hook(module: nn.Module, args) -> None:  # returns None: a returned value would replace the inputs
        module.to(device)

    return hook


def _offload_leaf(module: nn.Module, args, output) -> None:  # returns None: a returned value would replace the output
    module.to("cpu")
