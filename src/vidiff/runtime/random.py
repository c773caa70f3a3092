"""Random draws in the reference's shapes, order and device, so a seed gives the reference's noise."""

from __future__ import annotations

import torch

Generator = torch.Generator | list[torch.Generator] | None


def randn_tensor(
    shape: tuple[int, ...] | list[int],
    generator: Generator = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    layout: torch.layout | None = None,
) -> torch.Tensor:
    """Standard normal noise; a list of generators seeds each batch item on its own.

    A CPU generator with an accelerator ``device`` draws on the CPU and moves the result, as the
    reference does, so the same seed gives the same noise whatever the device.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    layout = layout or torch.strided
    shape = tuple(shape)
    rand_device = device
    if generator is not None:
        gen_type = (generator[0] if isinstance(generator, list) else generator).device.type
        if gen_type != device.type:
            if gen_type != "cpu":
                raise ValueError(f"cannot draw a {device} tensor from a {gen_type} generator; use a CPU generator or one on {device}")
            rand_device = torch.device("cpu")
    if isinstance(generator, list) and len(generator) == 1:
        generator = generator[0]
    if isinstance(generator, list):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}; pass one generator or exactly {shape[0]}")
        one = (1,) + shape[1:]
        parts = [torch.randn(one, generator=g, device=rand_device, dtype=dtype, layout=layout) for g in generator]
        return torch.cat(parts, dim=0).to(device)
    return torch.randn(shape, generator=generator, device=rand_device, dtype=dtype, layout=layout).to(device)
