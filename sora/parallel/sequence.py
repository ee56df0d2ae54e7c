"""Splitting one packed sequence by tokens across the ranks of a sequence-parallel group.

The pack is padded to a multiple of sp with one extra "pad" sample (grid 1 x 1 x pad) that attends
only to itself and is left out of the loss. Rank r holds tokens [r*L, (r+1)*L) of the padded pack:
a slice `PackedLayout` (sora/ops/layout.py) whose segments know where they start inside their
sample, so every layer except self-attention works on the slice as on whole samples (adaLN,
cross-attention to the segment's caption, MLP). Self-attention needs whole samples: Ulysses trades
tokens for heads and runs on the slice's `whole` layout.
"""
from __future__ import annotations

import torch

from sora.ops.layout import PackedLayout, slice_layout


def padded_packing(cu_seqlens: torch.Tensor, grid: torch.Tensor, sp: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cu_seqlens [B+1], grid [B, 3] of a pack -> the same with the pad sample appended:
    [B+2] int32 and [B+1, 3] int32 (the pad may be empty)."""
    cu = cu_seqlens.int()
    real = int(cu[-1])
    total = -(-real // sp) * sp
    pad = torch.tensor([[1, 1, total - real]], dtype=torch.int32, device=grid.device)
    return torch.cat([cu, cu.new_tensor([total])]), torch.cat([grid.int(), pad])


def shard_layout(padded: PackedLayout, sp: int, rank: int) -> PackedLayout:
    """This rank's slice of a padded pack's layout (see padded_packing)."""
    if not 0 <= rank < sp:
        raise ValueError(f"sequence-parallel rank {rank} is outside 0..{sp - 1}")
    per_rank = padded.num_tokens // sp
    return slice_layout(padded, rank * per_rank, (rank + 1) * per_rank)


def shard_rows(x: torch.Tensor, layout: PackedLayout) -> torch.Tensor:
    """Rows [lo, hi) of a per-token tensor of the real pack, zero rows for the pad."""
    lo, hi = layout.rows
    rows = x[lo:min(hi, x.shape[0])]
    missing = (hi - lo) - rows.shape[0]
    if missing:
        rows = torch.cat([rows, rows.new_zeros((missing,) + tuple(x.shape[1:]))])
    return rows
