"""Row chunking: a token-wise layer whose intermediate is much wider than its input runs on blocks of rows.

A transformer block's feed-forward widens every token 8x (GEGLU's projection to 2 x 4 x dim) before narrowing it
back; on the video UNets' largest maps that intermediate is the biggest tensor of the whole forward (SVD at
256x256, 8 frames, guidance: 65536 tokens x 512 = 134 MB, over a third of the UNet's peak). The layer works on
each token alone, so :func:`map_rows` runs it on blocks of rows, so that the wide intermediate holds at most about
:data:`CHUNK_ELEMENTS` values at a time: the same products row by row (identical values, up to the matrix-product
kernel's blocking), as fast or faster on 2 cores (the blocks stay in cache), and the peak memory of the widest step
drops to one block. Inputs below the budget run in one piece, as before.

:func:`gated_gelu` is the other axis, for GEGLU (``value * gelu(gate)`` of one projection to 2 x width): on the
CPU without autograd it computes the value and gate halves as two products on the weight's halves (views), in
column blocks of at most :data:`COLUMN_BLOCK_BYTES` of weight per half when the weight is larger, and writes
each block's product straight into the output. The gate is then a contiguous map (GELU in place on a strided half
ran 2x slower) and a block's weight stays in cache while its rows stream past: measured per call on 2 cores,
fp32, 128 rows 1280 -> 2 x 5120 (a full-size UNet's innermost level) 0.71-0.78x, 512 rows 128 -> 2 x 512
0.81-0.88x, elsewhere 0.9-1.0x. The same products column by column (differences around 1e-6 relative, the
matrix-product kernel's blocking).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .linear import Linear, linear

CHUNK_ELEMENTS = 1 << 20  # 4 MiB of fp32 per block (2^22 and 2^23 read a higher peak RSS on svd-mid-256, single runs)
MIN_ROWS = 1024  # matrix products with fewer rows lose speed on wide weights (1280 -> 10240: 1.4x slower at 200 rows)


def rows_per_chunk(rows: int, width: int) -> int:
    """Rows per block for an intermediate ``width`` values wide (``rows`` when no chunking is needed)."""
    return min(rows, max(MIN_ROWS, CHUNK_ELEMENTS // max(width, 1)))


def map_rows(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, width: int) -> torch.Tensor:
    """``fn(x)`` for a row-wise ``fn`` (acting on the last axis), computed on blocks of rows of ``x``."""
    rows = x.shape[:-1].numel()
    step = rows_per_chunk(rows, width)
    if step >= rows:
        return fn(x)
    flat = x.reshape(rows, x.shape[-1])
    first = fn(flat[:step])
    out = first.new_empty(rows, first.shape[-1])  # one output, filled block by block (no list of blocks + concat)
    out[:step] = first
    del first
    for start in range(step, rows, step):
        out[start:start + step] = fn(flat[start:start + step])
    return out.view(*x.shape[:-1], out.shape[-1])


COLUMN_BLOCK_BYTES = 4 << 20  # weight bytes per half-block (1280 inputs: 768 columns; 320 inputs: the whole half)


def plain_linear(layer: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``layer`` is a bare ``nn.Linear`` (or :class:`~vidiff.runtime.linear.Linear`) on the CPU that no hook
    (LoRA, offload, user) watches, so that its weight may be used directly; otherwise callers call the layer. Hooks
    marked ``vidiff_transparent`` (weight streaming's, which change no value) do not count."""
    return (type(layer) in (nn.Linear, Linear) and x.device.type == "cpu" and layer.weight.device.type == "cpu"
            and not any(not getattr(h, "vidiff_transparent", False) for h in layer._forward_hooks.values())
            and not (layer._forward_pre_hooks or nn.modules.module._global_forward_hooks
                     or nn.modules.module._global_forward_pre_hooks))


def gated_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``value * gelu(gate)`` for ``value, gate = (x @ weight.T + bias).chunk(2, -1)``, in column blocks (no autograd)."""
    width, k = weight.shape[0] // 2, weight.shape[1]
    step = max(64, COLUMN_BLOCK_BYTES // (k * weight.element_size()) // 64 * 64)
    out = None
    for start in range(0, width, step):
        end = min(start + step, width)
        cols = (slice(start, end), slice(width + start, width + end))
        value, gate = (linear(x, weight[c], None if bias is None else bias[c]) for c in cols)
        gate = torch.ops.aten.gelu_(gate)
        if end - start == width:  # one block: the value map is the output
            return value.mul_(gate)
        if out is None:
            out = value.new_empty(*value.shape[:-1], width)
        torch.mul(value, gate, out=out[..., start:end])
    return out
