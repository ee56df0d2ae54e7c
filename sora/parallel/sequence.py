"""Splitting one packed sequence by tokens across the ranks of a sequence-parallel group.

The pack is padded to a multiple of sp with one extra "pad" sample (grid 1 x 1 x pad) that attends
only to itself and is left out of the loss. Rank r holds tokens [r*L, (r+1)*L) of the padded pack.
Its slice cuts samples into *segments*: every layer except self-attention works per token or per
segment (adaLN, cross-attention to the segment's caption, MLP), so a segment behaves exactly like
its sample as long as it knows where it starts inside that sample (`offset`, for positions).
Self-attention needs whole samples: Ulysses trades tokens for heads and runs on the full pack.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SequenceShard:
    lo: int                          # first padded-pack token this rank holds
    hi: int                          # one past the last
    real: int                        # real tokens in the whole pack (pad excluded)
    cu_seqlens: torch.Tensor         # [S+1] int32 local segments
    max_seqlen: int
    segment_sample: torch.Tensor     # [S] int64 sample of each segment (B = the pad sample)
    segment_offset: torch.Tensor     # [S] int64 index of the segment's first token inside its sample
    full_cu_seqlens: torch.Tensor    # [B+2] int32 the padded pack (pad sample last, maybe empty)
    full_grid: torch.Tensor          # [B+1, 3] int32
    full_max_seqlen: int

    @property
    def local_real(self) -> int:
        """How many of this rank's tokens are real (the pad is always at the end)."""
        return max(0, min(self.hi, self.real) - self.lo)


def shard_sequence(cu_seqlens: torch.Tensor, grid: torch.Tensor, sp: int, rank: int) -> SequenceShard:
    """cu_seqlens [B+1], grid [B, 3] of a whole pack -> this rank's slice of it."""
    if not 0 <= rank < sp:
        raise ValueError(f"sequence-parallel rank {rank} is outside 0..{sp - 1}")
    cu = cu_seqlens.long().cpu()
    real = int(cu[-1])
    total = -(-real // sp) * sp
    pad = total - real
    full_cu = torch.cat([cu, cu.new_tensor([total])])                       # [B+2]
    full_grid = torch.cat([grid.cpu().int(), torch.tensor([[1, 1, pad]], dtype=torch.int32)])  # [B+1, 3]
    per_rank = total // sp
    lo, hi = rank * per_rank, (rank + 1) * per_rank
    starts = full_cu[:-1].clamp(min=lo)                                     # [B+1]
    ends = full_cu[1:].clamp(max=hi)
    keep = ends > starts                                                    # samples meeting [lo, hi)
    sample = torch.nonzero(keep).flatten()                                  # [S]
    lens = (ends - starts)[keep]
    offset = (starts - full_cu[:-1])[keep]
    local_cu = torch.cat([lens.new_zeros(1), lens.cumsum(0)]).int()
    full_lens = full_cu[1:] - full_cu[:-1]
    return SequenceShard(lo, hi, real, local_cu, int(lens.max()) if lens.numel() else 0, sample, offset,
                         full_cu.int(), full_grid, int(full_lens.max()))


def shard_rows(x: torch.Tensor, shard: SequenceShard) -> torch.Tensor:
    """Rows [lo, hi) of a per-token tensor of the real pack, zero rows for the pad."""
    rows = x[shard.lo:min(shard.hi, x.shape[0])]
    missing = (shard.hi - shard.lo) - rows.shape[0]
    if missing:
        rows = torch.cat([rows, rows.new_zeros((missing,) + tuple(x.shape[1:]))])
    return rows
