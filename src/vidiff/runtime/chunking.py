"""Row chunking: a token-wise layer whose intermediate is much wider than its input runs on blocks of rows.

A transformer block's feed-forward widens every token 8x (GEGLU's projection to 2 x 4 x dim) before narrowing it
back; on the video UNets' largest maps that intermediate is the biggest tensor of the whole forward (SVD at
256x256, 8 frames, guidance: 65536 tokens x 512 = 134 MB, over a third of the UNet's peak). The layer works on
each token alone, so :func:`map_rows` runs it on blocks of rows, so that the wide intermediate holds at most about
:data:`CHUNK_ELEMENTS` values at a time: the same products row by row (identical values, up to the matrix-product
kernel's blocking), as fast or faster on 2 cores (the blocks stay in cache), and the peak memory of the widest step
drops to one block. Inputs below the budget run in one piece, as before.
"""

from __future__ import annotations

from typing import Callable

import torch

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
