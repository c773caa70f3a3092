"""Matrix-product kernel choice: on AVX-512 CPUs the linear layers run through oneDNN where it measured faster than BLAS.

PyTorch's CPU ``F.linear`` calls MKL. How it ranks against oneDNN's matrix product,
``torch.ops.mkldnn._linear_pointwise`` on the same plain weight (no reordered copy), depends on the CPU (2 cores,
fp32, a full-size UNet's shapes):

- AMD Zen 4 (session 9): MKL 130-165 GFLOP/s, oneDNN 170-200; a t2v-full / svd-full UNet call 0.90x / 0.85x
  (alternating on / off in one process).
- AMD Zen 5 (session 10): MKL 120-190, oneDNN 290-410.
- Intel Xeon with AMX (family 6 model 167, session 12): MKL 170-195, oneDNN 145-180 (oneDNN 1.05-1.15x MKL's time).

So the choice is measured once per process on first use, separately for products at least :data:`ONEDNN_MIN_WIDTH`
wide in and out (:func:`wide_onednn`, on :data:`WIDE_SHAPES`, about 0.2 s) and for narrower ones
(:func:`narrow_onednn`, on :data:`NARROW_SHAPES`, the mid-size cases' 64-256 wide weights, about 40 ms): both kernels
timed alternately (:func:`measure`, the median of three rounds), oneDNN taken only if it needs at most
:data:`WIDE_GAIN` / :data:`NARROW_GAIN` of MKL's time. The narrow gain is stricter: on the Zen 4 the narrow products were 0.86-1.06x alone and, in place,
made those UNets 5-7% slower; on the Zen 5 oneDNN took 0.5x of MKL's time alone and the mid-size UNet calls
0.78-0.93x. Setting :data:`ONEDNN_WIDE` / :data:`ONEDNN_NARROW` pins a choice without measuring. oneDNN also costs
about 20 us more per call, so products of fewer than :data:`ONEDNN_MIN_MACS` multiply-adds (time embeddings, tiny
layers) stay with ``F.linear``. The same sums in another order (differences around 1e-6 relative).

bfloat16 products (where oneDNN runs them natively, :data:`BF16`) have a choice of their own, :func:`bf16_onednn`,
measured on both shape sets in bfloat16 (:data:`BF16_GAIN`): on the Intel Xeon with AMX (session 13) oneDNN took
0.75-0.78x of ``F.linear``'s time there, and in place the UNet calls 0.95-1.01x (t2v-mid, svd-full, t2v-full).

On AVX2-only CPUs the same comparison was 0.7-1.7x depending on the shape and inconsistent from run to run, so
there the choice is off (:data:`ONEDNN_LINEAR`). Also ``F.linear``: other devices and dtypes (float16 among them), autograd, and
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
ONEDNN_MIN_WIDTH = 320  # inputs and outputs: the wide products (wide_onednn); narrower ones: narrow_onednn
ONEDNN_WIDE: bool | None = None  # wide products through oneDNN; None: measured on first use (wide_onednn)
ONEDNN_NARROW: bool | None = None  # narrower products through oneDNN; None: measured on first use (narrow_onednn)
WIDE_GAIN = 0.95  # oneDNN's time / MKL's at most, on WIDE_SHAPES, for ONEDNN_WIDE to be on
NARROW_GAIN = 0.8  # the same on NARROW_SHAPES for ONEDNN_NARROW
WIDE_SHAPES = ((1024, 320, 1280), (1024, 1280, 320))  # rows, inputs, outputs: a full-size feed-forward, in and out
NARROW_SHAPES = ((2048, 64, 256), (512, 128, 128))  # a mid-size feed-forward and projection
BF16 = ONEDNN_LINEAR and torch.ops.mkldnn._is_mkldnn_bf16_supported()  # oneDNN runs bfloat16 natively here
ONEDNN_BF16: bool | None = None  # bfloat16 products through oneDNN; None: measured on first use (bf16_onednn)
BF16_GAIN = 0.95  # oneDNN's time / F.linear's at most, on WIDE_SHAPES + NARROW_SHAPES in bfloat16


def use_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`linear` runs this product through oneDNN."""
    if not (ONEDNN_LINEAR and torch.backends.mkldnn.enabled and not torch.compiler.is_compiling()
            and x.device.type == weight.device.type == "cpu" and x.dtype == weight.dtype
            and weight.dim() == 2 and x.dim() >= 2 and not torch.is_grad_enabled()
            and x.numel() * weight.shape[0] >= ONEDNN_MIN_MACS):
        return False
    if x.dtype == torch.float32:
        return wide_onednn() if min(weight.shape) >= ONEDNN_MIN_WIDTH else narrow_onednn()
    return x.dtype == torch.bfloat16 and BF16 and bf16_onednn()


def wide_onednn() -> bool:
    """Whether products at least :data:`ONEDNN_MIN_WIDTH` wide take oneDNN: :data:`ONEDNN_WIDE`, measured on the
    first call when it is None (:func:`measure` on :data:`WIDE_SHAPES`) and kept for the process."""
    global ONEDNN_WIDE
    if ONEDNN_WIDE is None:
        ONEDNN_WIDE = measure(WIDE_SHAPES, repeats=2) <= WIDE_GAIN
    return ONEDNN_WIDE


def narrow_onednn() -> bool:
    """Whether narrower products take oneDNN: :data:`ONEDNN_NARROW`, measured like :func:`wide_onednn` on
    :data:`NARROW_SHAPES`."""
    global ONEDNN_NARROW
    if ONEDNN_NARROW is None:
        ONEDNN_NARROW = measure(NARROW_SHAPES) <= NARROW_GAIN
    return ONEDNN_NARROW


def bf16_onednn() -> bool:
    """Whether bfloat16 products take oneDNN: :data:`ONEDNN_BF16`, measured like :func:`wide_onednn` on
    :data:`WIDE_SHAPES` and :data:`NARROW_SHAPES` in bfloat16 (:data:`BF16_GAIN`)."""
    global ONEDNN_BF16
    if ONEDNN_BF16 is None:
        ONEDNN_BF16 = measure(WIDE_SHAPES + NARROW_SHAPES, repeats=2, dtype=torch.bfloat16) <= BF16_GAIN
    return ONEDNN_BF16


def measure(shapes, repeats: int = 7, rounds: int = 3, dtype: torch.dtype = torch.float32) -> float:
    """oneDNN's time over ``F.linear``'s on ``shapes`` (rows, inputs, outputs; ``dtype``, CPU, the current thread
    count): the two kernels timed alternately, best of ``repeats`` each, summed over the shapes; the median of
    ``rounds`` such ratios. On a shared VM (session 13: 17-36% of the CPU time stolen by the host) one round read
    0.26-0.48 where the others read 0.9-1.2: the median keeps one such round from setting the choice."""
    import statistics
    import time

    g = torch.Generator().manual_seed(0)
    cases = []
    for rows, inputs, outputs in shapes:
        x, w = torch.randn(rows, inputs, generator=g).to(dtype), torch.randn(outputs, inputs, generator=g).to(dtype)
        b = torch.randn(outputs, generator=g).to(dtype)
        cases.append({"onednn": lambda x=x, w=w, b=b: torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], ""),
                      "blas": lambda x=x, w=w, b=b: F.linear(x, w, b)})
    ratios = []
    with torch.no_grad():
        for r in range(rounds):
            best = {"onednn": 0.0, "blas": 0.0}
            for kernels in cases:
                times = {name: float("inf") for name in kernels}
                for i in range(repeats + (r == 0)):  # the first pass of the first round warms both up
                    for name, kernel in kernels.items():
                        t0 = time.perf_counter()
                        kernel()
                        if i or r:
                            times[name] = min(times[name], time.perf_counter() - t0)
                for name in kernels:
                    best[name] += times[name]
            ratios.append(best["onednn"] / best["blas"])
    return statistics.median(ratios)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, through oneDNN where faster (:func:`use_onednn`).

    An input of three or more dimensions whose matrices (last two dimensions) have no unit stride is copied to
    a contiguous one first: ``F.linear`` multiplies it through a batched generic path, 20x slower on 2 cores for a
    temporal transformer's ``proj_in`` (a channel-first map permuted to ``(b h w) f c``, 256 x 4 x 64: 6.2 ms
    instead of 0.27 ms with the copy); the reference pays it."""
    if x.dim() > 2 and x.stride(-1) != 1 and x.stride(-2) != 1 and x.device.type == "cpu":
        x = x.contiguous()
    if use_onednn(x, weight):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` whose forward goes through :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
