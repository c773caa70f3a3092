"""LoRA on existing ``nn.Linear`` / ``nn.Conv2d`` layers, without replacing them (no peft).

Each adapted layer keeps its class and its state-dict keys; a :class:`LoraHook` (a forward hook) adds
``sum_a B_a(A_a(x)) * scaling_a`` over the active adapters, and the adapters' weights live on the layer as
non-persistent buffers (so ``.to(device, dtype)`` moves them and ``state_dict()`` / ``save_pretrained`` do not
see them). Fusing adds ``B @ A * scaling`` into the layer's weight; unfusing subtracts it again.

The arithmetic follows peft's LoRA layers: the base output first, then each active adapter's term in order,
the input cast to the adapter's dtype, the sum cast back to the base output's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

SUPPORTED = (nn.Linear, nn.Conv2d)


@dataclass
class LoraAdapter:
    """One adapter on one layer: buffer names of its A (down) and B (up) weights, and its scale alpha / r."""

    a_buffer: str
    b_buffer: str
    base_scaling: float
    weight: float = 1.0  # the user's adapter weight (set_adapters)

    @property
    def scaling(self) -> float:
        return self.weight * self.base_scaling


class LoraHook:
    """The LoRA state of one layer and the forward hook that applies it."""

    def __init__(self, layer: nn.Module):
        if not isinstance(layer, SUPPORTED):
            raise TypeError(f"LoRA can adapt nn.Linear and nn.Conv2d layers, not {type(layer).__name__}")
        self.layer = layer
        self.adapters: dict[str, LoraAdapter] = {}
        self.active: list[str] = []
        self.merged: list[str] = []
        self.enabled = True
        self.runtime_scale = 1.0  # cross_attention_kwargs={"scale": s} for the length of one forward
        self._slots = 0
        self.handle = layer.register_forward_hook(self, prepend=True)

    # ----------------------------------------------------------------- adapters
    def add(self, name: str, down: torch.Tensor, up: torch.Tensor, base_scaling: float) -> None:
        self._check_shapes(name, down, up)
        ref = self.layer.weight
        slot = self._slots
        self._slots += 1
        a_name, b_name = f"lora_A_{slot}", f"lora_B_{slot}"
        self.layer.register_buffer(a_name, down.to(device=ref.device, dtype=ref.dtype), persistent=False)
        self.layer.register_buffer(b_name, up.to(device=ref.device, dtype=ref.dtype), persistent=False)
        self.adapters[name] = LoraAdapter(a_name, b_name, base_scaling)

    def remove(self, name: str) -> None:
        adapter = self.adapters.pop(name, None)
        if adapter is None:
            return
        if name in self.merged:
            self.unmerge([name])
        for buffer in (adapter.a_buffer, adapter.b_buffer):
            delattr(self.layer, buffer)
        self.active = [a for a in self.active if a != name]

    def detach(self) -> None:
        """Take the hook off and drop every adapter's weights (a fused adapter's effect stays in the weight)."""
        self.handle.remove()
        for adapter in self.adapters.values():
            for buffer in (adapter.a_buffer, adapter.b_buffer):
                delattr(self.layer, buffer)
        self.adapters.clear()

    def _check_shapes(self, name: str, down: torch.Tensor, up: torch.Tensor) -> None:
        layer = self.layer
        if isinstance(layer, nn.Linear):
            ok = down.ndim == 2 and up.ndim == 2 and down.shape[1] == layer.in_features and up.shape[0] == layer.out_features and up.shape[1] == down.shape[0]
            expected = f"down (r, {layer.in_features}) and up ({layer.out_features}, r)"
        else:
            ok = (down.ndim == 4 and up.ndim == 4 and down.shape[1] == layer.in_channels // layer.groups
                  and tuple(down.shape[2:]) == tuple(layer.kernel_size) and up.shape[0] == layer.out_channels
                  and up.shape[1] == down.shape[0] and tuple(up.shape[2:]) == (1, 1))
            expected = f"down (r, {layer.in_channels}, {tuple(layer.kernel_size)}) and up ({layer.out_channels}, r, 1, 1)"
        if not ok:
            raise ValueError(f"LoRA {name!r}: weights of shapes {tuple(down.shape)} / {tuple(up.shape)} do not fit "
                             f"{layer}; expected {expected}. The LoRA was made for another base model.")

    # ----------------------------------------------------------------- forward
    def _down(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        if isinstance(layer, nn.Linear):
            return F.linear(x, a)
        return F.conv2d(x, a, stride=layer.stride, padding=layer.padding, dilation=layer.dilation)

    def _up(self, h: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.linear(h, b) if isinstance(self.layer, nn.Linear) else F.conv2d(h, b)

    def __call__(self, layer: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if not self.enabled or self.merged or not self.active:
            return None
        x, result = args[0], output
        out_dtype = result.dtype
        for name in self.active:
            adapter = self.adapters.get(name)
            if adapter is None:
                continue
            a, b = getattr(layer, adapter.a_buffer), getattr(layer, adapter.b_buffer)
            x = x.to(a.dtype)
            result = result + self._up(self._down(x, a), b) * (adapter.scaling * self.runtime_scale)
        return result.to(out_dtype)

    # ----------------------------------------------------------------- fusing
    def delta_weight(self, name: str) -> torch.Tensor:
        """``B @ A * scaling`` in the layer's weight layout (in float32 on the CPU for half-precision weights, as peft)."""
        adapter = self.adapters[name]
        a, b = getattr(self.layer, adapter.a_buffer), getattr(self.layer, adapter.b_buffer)
        dtype = b.dtype
        if b.device.type == "cpu" and dtype in (torch.float16, torch.bfloat16):
            a, b = a.float(), b.float()
        if isinstance(self.layer, nn.Linear):
            delta = b @ a
        elif a.shape[2:] == (1, 1):
            delta = (b.squeeze(3).squeeze(2) @ a.squeeze(3).squeeze(2)).unsqueeze(2).unsqueeze(3)
        else:
            delta = F.conv2d(a.permute(1, 0, 2, 3), b).permute(1, 0, 2, 3)
        return (delta * adapter.scaling).to(dtype)

    def merge(self, names: list[str] | None = None, safe: bool = False) -> None:
        names = [n for n in (self.active if names is None else names) if n in self.adapters and n not in self.merged]
        with torch.no_grad():
            for name in names:
                delta = self.delta_weight(name).to(self.layer.weight.dtype)
                if safe and not torch.isfinite(self.layer.weight + delta).all():
                    raise ValueError(f"fusing LoRA {name!r} would put NaN/inf into {self.layer}; the adapter is broken")
                self.layer.weight.add_(delta)  # (in place on the parameter: its version counts the change)
                self.merged.append(name)

    def unmerge(self, names: list[str] | None = None) -> None:
        names = list(self.merged) if names is None else [n for n in names if n in self.merged]
        with torch.no_grad():
            for name in reversed(names):
                self.layer.weight.sub_(self.delta_weight(name).to(self.layer.weight.dtype))
                self.merged.remove(name)


# ---------------------------------------------------------------------------------------------- a model's LoRAs


class LoraState:
    """Every LoRA loaded into one model (kept on it as ``model._vidiff_lora``): the hooked layers by module path, the
    adapters in load order, and model hooks that apply ``cross_attention_kwargs={"scale": s}`` during a forward."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.hooks: dict[str, LoraHook] = {}
        self.adapters: list[str] = []
        self.active: list[str] = []
        self.enabled = True
        self._handles = [model.register_forward_pre_hook(self._scale_in, with_kwargs=True),
                         model.register_forward_hook(self._scale_out, always_call=True)]

    @staticmethod
    def of(model: nn.Module, create: bool = False) -> "LoraState | None":
        state = getattr(model, "_vidiff_lora", None)
        if state is None and create:
            state = LoraState(model)
            model._vidiff_lora = state
        return state

    def _scale_in(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        scale = (kwargs.get("cross_attention_kwargs") or {}).get("scale", 1.0)
        for hook in self.hooks.values():
            hook.runtime_scale = scale

    def _scale_out(self, module: nn.Module, args: tuple, output) -> None:
        for hook in self.hooks.values():
            hook.runtime_scale = 1.0

    def default_name(self) -> str:
        """``default_{n}``, n the number of adapters on the first adapted layer (the reference's rule)."""
        for name, _ in self.model.named_modules():
            if name in self.hooks:
                return f"default_{len(self.hooks[name].adapters)}"
        return "default_0"

    def add(self, adapter_name: str, layers: dict[str, tuple[torch.Tensor, torch.Tensor, float]]) -> None:
        """Add an adapter ({module path: (down, up, alpha / r)}) and make it the only active one, as the reference does."""
        modules = dict(self.model.named_modules())
        for path, (down, up, scaling) in layers.items():
            if path not in self.hooks:
                self.hooks[path] = LoraHook(modules[path])
            self.hooks[path].add(adapter_name, down, up, scaling)
        self.adapters.append(adapter_name)
        self.activate([adapter_name])

    def activate(self, names: list[str], weights: list[float] | None = None) -> None:
        for hook in self.hooks.values():
            hook.active = list(names)
            for name, weight in zip(names, weights or []):
                if name in hook.adapters:
                    hook.adapters[name].weight = weight
        self.active = list(names)

    def set_enabled(self, enabled: bool) -> None:
        for hook in self.hooks.values():
            if not enabled:
                hook.unmerge()  # the reference unmerges fused weights when adapters are disabled
            hook.enabled = enabled
        self.enabled = enabled

    def delete(self, names: list[str]) -> None:
        for path in list(self.hooks):
            hook = self.hooks[path]
            for name in names:
                hook.remove(name)
            if not hook.adapters:
                hook.detach()
                del self.hooks[path]
        self.adapters = [a for a in self.adapters if a not in names]
        self.active = [a for a in self.active if a not in names]
        if not self.hooks:
            self.unload()

    def unload(self) -> None:
        """Remove every adapter and hook; fused adapters stay in the weights."""
        for hook in self.hooks.values():
            hook.detach()
        self.hooks.clear()
        for handle in self._handles:
            handle.remove()
        self.model.__dict__.pop("_vidiff_lora", None)
