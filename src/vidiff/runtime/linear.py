"""Matrix-product kernel choice: on AVX-512 CPUs the linear layers run through oneDNN instead of BLAS.

PyTorch's CPU ``F.linear`` calls MKL. On the AVX-512 machines the benchmarks run on (AMD EPYC, 2 cores, fp32) MKL
reaches 130-165 GFLOP/s at a full-size UNet's shapes (and 85-145 on a busy minute) where oneDNN's matrix product,
``torch.ops.mkldnn._linear_pointwise``, reaches 170-200 on the same plain weight, without a reordered copy:
0.70-0.97x the time at 128-2048 rows x 320-5120 inputs (the fewer the rows and the wider the weight, the larger
the gain); a t2v-full / svd-full UNet call 0.90x / 0.85x (alternating on / off in one process). Narrower weights
stay with ``F.linear`` (:data:`ONEDNN_MIN_WIDTH`): alone they were 0.86-1.06x, but in place the mid-size cases'
UNets (widths 64-256) ran 5-7% slower through oneDNN. oneDNN also costs about 20 us more per call, so products of
fewer than :data:`ONEDNN_MIN_MACS` multiply-adds (time embeddings, tiny layers) stay with ``F.linear`` too. The
same sums in another order (differences around 1e-6 relative).

On AVX2-only CPUs the same comparison was 0.7-1.7x depending on the shape and inconsistent from run to run, so
there the choice is off (:data:`ONEDNN_LINEAR`). Also ``F.linear``: other devices and dtypes, autograd, and
``torch.compile`` (which lowers linear layers itself).

:class:`Linear` is ``nn.Linear`` (same arguments, parameters and state-dict keys; ``isinstance(m, nn.Linear)``
holds) with its forward going through :func:`linear`; the models' linear layers (attention projections,
feed-forwards, the transformers' projections in and out, time and class embeddings) are built with it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _avx512() -> bool:
    try:
        return torch.backends.cpu.get_cpu_capability().startswith("AVX512")
    except (AttributeError, RuntimeError):  # pragma: no cover - older builds without the query
        return False


AVX512 = _avx512()  # the CPU kind the kernel choice depends on
ONEDNN_LINEAR = AVX512 and torch.backends.mkldnn.is_available()  # on AVX-512 CPUs (see the module docstring)
ONEDNN_MIN_MACS = 1 << 20  # rows x inputs x outputs below which F.linear's smaller fixed cost wins
ONEDNN_MIN_WIDTH = 320  # inputs and outputs; narrower (the mid-size cases' 64-256) ran slower through oneDNN in place


def use_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`linear` runs this product through oneDNN."""
    return (ONEDNN_LINEAR and torch.backends.mkldnn.enabled and not torch.compiler.is_compiling()
            and x.device.type == weight.device.type == "cpu" and x.dtype == weight.dtype == torch.float32
            and weight.dim() == 2 and x.dim() >= 2 and not torch.is_grad_enabled()
            and min(weight.shape) >= ONEDNN_MIN_WIDTH and x.numel() * weight.shape[0] >= ONEDNN_MIN_MACS)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, through oneDNN where faster (:func:`use_onednn`)."""
    if use_onednn(x, weight):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` whose forward goes through :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
