"""Model output dataclasses: attribute, key and index access like the reference's ``BaseOutput``.

Usage::

    @dataclass
    class UNet3DConditionOutput(BaseOutput):
        sample: torch.Tensor

    out = UNet3DConditionOutput(sample=x)
    out.sample is out["sample"] is out[0]; out.to_tuple() == (x,)   # fields left as None are skipped
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch


class BaseOutput(OrderedDict):
    """A dataclass that is also an ordered dict of its non-None fields (subclasses add ``@dataclass``)."""

    def __post_init__(self) -> None:
        fields = dataclasses.fields(self)
        if not fields:
            raise ValueError(f"{type(self).__name__} has no fields")
        for f in fields:
            value = getattr(self, f.name)
            if value is not None:
                self[f.name] = value

    def __getitem__(self, k: Any) -> Any:
        if isinstance(k, str):
            return dict(self.items())[k]
        return self.to_tuple()[k]

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.keys() and value is not None:
            super().__setitem__(name, value)
        super().__setattr__(name, value)

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        super().__setattr__(key, value)

    def __reduce__(self):
        fn, _args, *rest = super().__reduce__()
        return (fn, tuple(getattr(self, f.name) for f in dataclasses.fields(self)), *rest)

    def _frozen(self, *args, **kwargs):
        raise TypeError(f"{type(self).__name__} is read-only as a dict; set attributes instead")

    __delitem__ = setdefault = pop = update = _frozen

    def to_tuple(self) -> tuple[Any, ...]:
        """The non-None fields, in declaration order."""
        return tuple(self[k] for k in self.keys())


@dataclass
class AutoencoderKLOutput(BaseOutput):
    """``latent_dist``: a ``DiagonalGaussianDistribution`` over the latents."""

    latent_dist: Any


@dataclass
class DecoderOutput(BaseOutput):
    """``sample``: the decoded images, (b, c, h, w)."""

    sample: torch.Tensor
    commit_loss: torch.Tensor | None = None
