"""Per-token sample index and (t, h, w) position, derived from cu_seqlens + grid.

Fused kernels derive these in registers; the reference materialises them.
"""
from __future__ import annotations

import torch


def check_packing(cu_seqlens: torch.Tensor, grid: torch.Tensor, total: int | None = None) -> None:
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must be 1-D with B+1 >= 2 entries, got shape {tuple(cu_seqlens.shape)}")
    if grid.shape != (cu_seqlens.numel() - 1, 3):
        raise ValueError(f"grid must be [B, 3] = [{cu_seqlens.numel() - 1}, 3], got {tuple(grid.shape)}")
    lens = cu_seqlens[1:] - cu_seqlens[:-1]
    if int(cu_seqlens[0]) != 0 or bool((lens < 0).any()):
        raise ValueError("cu_seqlens must start at 0 and be non-decreasing")
    if not torch.equal(lens.long(), grid.long().prod(dim=1)):
        raise ValueError(f"cu_seqlens lengths {lens.tolist()} do not match grid products {grid.long().prod(1).tolist()}")
    if total is not None and int(cu_seqlens[-1]) != total:
        raise ValueError(f"cu_seqlens ends at {int(cu_seqlens[-1])} but there are {total} tokens")


def sample_index(cu_seqlens: torch.Tensor, total: int | None = None) -> torch.Tensor:
    """[N] int64: which sample each token belongs to."""
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    return torch.repeat_interleave(torch.arange(lens.numel(), device=cu_seqlens.device), lens,
                                   output_size=total)


def token_positions(cu_seqlens: torch.Tensor, grid: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
    """[N, 3] int64 (t, h, w) of each token inside its own sample (row-major t, h, w order).

    offset [B] (optional): the packed entries are segments of larger samples starting at these
    token indices (a sequence-parallel slice); the grid is the whole sample's.
    """
    total = int(cu_seqlens[-1])
    sid = sample_index(cu_seqlens, total)                                  # [N]
    local = torch.arange(total, device=cu_seqlens.device) - cu_seqlens.long()[sid]
    if offset is not None:
        local = local + offset.long()[sid]
    g = grid.long()[sid]                                                   # [N, 3]
    hw = g[:, 1] * g[:, 2]
    t = local // hw
    h = (local % hw) // g[:, 2]
    w = local % g[:, 2]
    return torch.stack([t, h, w], dim=1)


def packing_index_torch(cu_seqlens: torch.Tensor, grid: torch.Tensor, total: int | None = None):
    """(sample id [N] int64, (t, h, w) [N, 3] int64) of every token: the reference pair."""
    total = int(cu_seqlens[-1]) if total is None else total
    return sample_index(cu_seqlens, total), token_positions(cu_seqlens, grid)


def _ext_packing_index(backend: str):
    from sora.ops import _ext

    def packing_index(cu_seqlens: torch.Tensor, grid: torch.Tensor, total: int | None = None):
        _ext.backend_for(cu_seqlens, backend)
        total = int(cu_seqlens[-1]) if total is None else total
        return _ext.ops().packing_index(cu_seqlens, grid, total)
    packing_index.__name__ = f"packing_index_{backend}"
    return _ext.for_backend(backend, packing_index)


# No gradient flows through integer indices, so no autograd.Function here.
IMPLEMENTATIONS = {"torch": packing_index_torch, "cpp": _ext_packing_index("cpp"), "cuda": _ext_packing_index("cuda")}
