"""adaLN modulation on packed tokens: LayerNorm (no affine), then x*(1+scale[s]) + shift[s]."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from sora.ops.packing_index import sample_index


def adaln_modulate_torch(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor,
                         cu_seqlens: torch.Tensor, eps: float = 1e-6, sample: torch.Tensor | None = None) -> torch.Tensor:
    """x [N, D], shift/scale [B, D] -> [N, D]; token n uses its own sample's modulation.
    sample [N] (optional): the layout's token -> sample index, else derived from cu_seqlens."""
    if shift.shape != scale.shape or shift.shape[0] != cu_seqlens.numel() - 1:
        raise ValueError(f"shift/scale must be [B, D] with B = {cu_seqlens.numel() - 1}, got {tuple(shift.shape)}, {tuple(scale.shape)}")
    sid = sample_index(cu_seqlens, x.shape[0]) if sample is None else sample   # [N]
    h = F.layer_norm(x, (x.shape[-1],), eps=eps)
    return h * (1 + scale[sid]) + shift[sid]


def _triton_adaln(x, shift, scale, cu_seqlens, eps=1e-6):
    from kernels.adaln import adaln_modulate  # imported at first use: Triton fixes interpreted-or-compiled then
    return adaln_modulate(x, shift, scale, cu_seqlens, eps)


IMPLEMENTATIONS = {"torch": adaln_modulate_torch}
try:  # registered only where Triton imports (on CPU it runs only under TRITON_INTERPRET=1)
    import triton  # noqa: F401
    IMPLEMENTATIONS["triton"] = _triton_adaln
except ImportError:
    IMPLEMENTATIONS["triton"] = None
