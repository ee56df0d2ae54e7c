"""The packed layout: where every token of a pack (or of one rank's slice of it) sits.

Built once per pack and handed, as one object, to the model, its ops, Ulysses, the trainer and the
samplers. Tokens of a sample are in row-major (t, h, w) order and samples are concatenated;
`cu_seqlens` + `grid` say everything, and the per-token sample index and (t, h, w) position are
derived from them here, once, by the `packing_index` op (fused kernels derive them in registers).

A *slice* (sequence parallelism) holds rows [lo, hi) of a whole pack that was padded with one pad
sample to a multiple of the slice count; it cuts samples into segments that know where they start
inside their sample (`offset`). `whole` is that padded pack: self-attention and patch embedding,
which need whole samples, work on it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class PackedLayout:
    cu_seqlens: torch.Tensor            # [S+1] int32 segment boundaries (whole samples when not a slice)
    max_seqlen: int
    grid: torch.Tensor                  # [S, 3] int32 token grid (T', H', W') of each segment's whole sample
    sample_index: torch.Tensor          # [L] int64 segment of each token
    positions: torch.Tensor             # [L, 3] int64 (t, h, w) of each token inside its sample
    offset: torch.Tensor | None = None  # [S] int64 first token of each segment inside its sample (slices)
    whole: PackedLayout | None = None   # the padded whole pack this slice was cut from
    rows: tuple[int, int] | None = None  # (lo, hi): this slice's rows of `whole`

    @property
    def num_tokens(self) -> int:
        return int(self.sample_index.shape[0])

    @property
    def num_segments(self) -> int:
        return int(self.grid.shape[0])

    @property
    def is_slice(self) -> bool:
        return self.whole is not None

    def to(self, device) -> PackedLayout:
        move = (lambda t: None if t is None else t.to(device))
        return PackedLayout(move(self.cu_seqlens), self.max_seqlen, move(self.grid), move(self.sample_index),
                            move(self.positions), move(self.offset), None if self.whole is None else self.whole.to(device),
                            self.rows)


def build_layout(cu_seqlens: torch.Tensor, grid: torch.Tensor, packing_index: Callable | None = None) -> PackedLayout:
    """The layout of whole samples: cu_seqlens [B+1] int32, grid [B, 3] int32 (same device).
    `packing_index(cu_seqlens, grid, total) -> (sample [N], positions [N, 3])` is the kernel that
    derives the per-token indices (the torch reference when None)."""
    from sora.ops.packing_index import check_packing, packing_index_torch

    cu_seqlens, grid = cu_seqlens.int(), grid.int()
    check_packing(cu_seqlens, grid)
    total = int(cu_seqlens[-1])
    sample, positions = (packing_index or packing_index_torch)(cu_seqlens, grid, total)
    lens = cu_seqlens[1:] - cu_seqlens[:-1]
    return PackedLayout(cu_seqlens, int(lens.max()) if lens.numel() else 0, grid, sample, positions)


def slice_layout(whole: PackedLayout, lo: int, hi: int) -> PackedLayout:
    """Rows [lo, hi) of a (padded) whole pack as segments. Indices are rows of the whole's: the
    segments of a slice are consecutive samples clipped to [lo, hi)."""
    cu = whole.cu_seqlens.long()
    starts, ends = cu[:-1].clamp(min=lo, max=hi), cu[1:].clamp(min=lo, max=hi)
    keep = ends > starts                                                   # samples meeting [lo, hi)
    lens = (ends - starts)[keep]
    local_cu = torch.cat([lens.new_zeros(1), lens.cumsum(0)]).int()
    sample = whole.sample_index[lo:hi]
    first = torch.nonzero(keep).flatten()[:1]
    return PackedLayout(local_cu, int(lens.max()) if lens.numel() else 0, whole.grid[keep],
                        sample - (first if first.numel() else 0), whole.positions[lo:hi],
                        (starts - cu[:-1])[keep], whole, (lo, hi))
