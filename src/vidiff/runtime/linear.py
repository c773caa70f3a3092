"""Matrix-product kernel choice: on AVX-512 CPUs the linear layers run through oneDNN instead of BLAS.

PyTorch's CPU ``F.linear`` calls MKL, which on the AMD EPYC machines the benchmarks run on (2 cores, fp32) reaches
well under the CPU's arithmetic rate: 130-165 GFLOP/s at a full-size UNet's shapes on a Zen 4 (session 9), 120-190
on a Zen 5 (session 10), where oneDNN's matrix product, ``torch.ops.mkldnn._linear_pointwise``, on the same plain
weight (no reordered copy) reaches 170-200 and 290-410: a Zen 4's t2v-full / svd-full UNet call 0.90x / 0.85x
(alternating on / off in one process). Products at least :data:`ONEDNN_MIN_WIDTH` wide in and out take it on every
AVX-512 CPU (:data:`ONEDNN_LINEAR`).

Narrower weights (the mid-size cases' 64-256) rank differently from one CPU generation to the next: on the Zen 4
they were 0.86-1.06x alone and, in place, made those UNets 5-7% slower; on the Zen 5 oneDNN takes 0.5x of MKL's
time alone and the mid-size UNet calls 0.78-0.93x. So whether they take oneDNN too is measured once per process on
first use (:func:`narrow_onednn`: both kernels timed alternately on two mid-size shapes, about 10 ms; oneDNN only
if it needs at most :data:`NARROW_GAIN` of MKL's time), or pinned by setting :data:`ONEDNN_NARROW`. oneDNN also
costs about 20 us more per call, so products of fewer than :data:`ONEDNN_MIN_MACS` multiply-adds (time
embeddings, tiny layers) stay with ``F.linear``. The same sums in another order (differences around 1e-6
relative).

On AVX2-only CPUs the same comparison was 0.7-1.7x depending on the shape and inconsistent from run to run, so
there the choice is off. Also ``F.linear``: other devices and dtypes, autograd, and ``torch.compile`` (which lowers
linear layers itself).

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
ONEDNN_MIN_WIDTH = 320  # inputs and outputs; narrower ones take oneDNN only where it measured faster (narrow_onednn)
ONEDNN_NARROW: bool | None = None  # narrower products through oneDNN too; None: measured on first use (narrow_onednn)
NARROW_GAIN = 0.8  # oneDNN's time / MKL's at most, on the measured narrow shapes, for ONEDNN_NARROW to be on
NARROW_SHAPES = ((2048, 64, 256), (512, 128, 128))  # rows, inputs, outputs: a mid-size feed-forward and projection


def use_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`linear` runs this product through oneDNN."""
    return (ONEDNN_LINEAR and torch.backends.mkldnn.enabled and not torch.compiler.is_compiling()
            and x.device.type == weight.device.type == "cpu" and x.dtype == weight.dtype == torch.float32
            and weight.dim() == 2 and x.dim() >= 2 and not torch.is_grad_enabled()
            and x.numel() * weight.shape[0] >= ONEDNN_MIN_MACS
            and (min(weight.shape) >= ONEDNN_MIN_WIDTH or narrow_onednn()))


def narrow_onednn() -> bool:
    """Whether products narrower than :data:`ONEDNN_MIN_WIDTH` take oneDNN: :data:`ONEDNN_NARROW`, measured on the
    first call when it is None (:func:`measure_narrow`) and kept for the process."""
    global ONEDNN_NARROW
    if ONEDNN_NARROW is None:
        ONEDNN_NARROW = measure_narrow() <= NARROW_GAIN
    return ONEDNN_NARROW


def measure_narrow(repeats: int = 7) -> float:
    """oneDNN's time over ``F.linear``'s on :data:`NARROW_SHAPES` (float32, CPU, the current thread count): the two
    kernels timed alternately, best of ``repeats`` each, summed over the shapes."""
    import time

    g = torch.Generator().manual_seed(0)
    best = {"onednn": 0.0, "blas": 0.0}
    with torch.no_grad():
        for rows, inputs, outputs in NARROW_SHAPES:
            x, w = torch.randn(rows, inputs, generator=g), torch.randn(outputs, inputs, generator=g)
            b = torch.randn(outputs, generator=g)
            kernels = {"onednn": lambda: torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], ""),
                       "blas": lambda: F.linear(x, w, b)}
            times = {name: float("inf") for name in kernels}
            for i in range(repeats + 1):  # the first round warms both up
                for name, kernel in kernels.items():
                    t0 = time.perf_counter()
                    kernel()
                    if i:
                        times[name] = min(times[name], time.perf_counter() - t0)
            for name in kernels:
                best[name] += times[name]
    return best["onednn"] / best["blas"]


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, through oneDNN where faster (:func:`use_onednn`)."""
    if use_onednn(x, weight):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` whose forward goes through :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
