"""3-D rotary position embedding on packed tokens (rotate-half pairing).

The head dim is split into (t, h, w) sections; each token's position comes from cu_seqlens + grid.
"""
from __future__ import annotations

import torch

from sora.ops import _ext
from sora.ops.packing_index import token_positions


def rope_sections(head_dim: int) -> tuple[int, int, int]:
    """Default split: about d/4 for time, the rest shared by height and width; all even."""
    dt = max(2, (head_dim // 4) // 2 * 2)
    rest = head_dim - dt
    dh = rest // 2 // 2 * 2
    dw = rest - dh
    return dt, dh, dw


def rope_angles(positions: torch.Tensor, sections: tuple[int, int, int], theta: float) -> torch.Tensor:
    """positions [N, 3] -> angles [N, D/2] (float32)."""
    parts = []
    for axis, dim in enumerate(sections):
        inv = theta ** (-torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim)  # [dim/2]
        parts.append(positions[:, axis:axis + 1].float() * inv[None, :])
    return torch.cat(parts, dim=1)


def apply_rope_torch(x: torch.Tensor, cu_seqlens: torch.Tensor, grid: torch.Tensor,
                     sections: tuple[int, int, int], theta: float = 10000.0,
                     positions: torch.Tensor | None = None) -> torch.Tensor:
    """x [N, H, D] -> rotated [N, H, D]. Pairs (i, i + D/2) within each section (rotate-half).
    positions [N, 3] (optional): the layout's token positions, else derived from cu_seqlens + grid."""
    n, _, d = x.shape
    if sum(sections) != d or any(s % 2 for s in sections):
        raise ValueError(f"rope sections {sections} must be even and sum to head dim {d}")
    pos = token_positions(cu_seqlens, grid) if positions is None else positions
    ang = rope_angles(pos, sections, theta)                                # [N, D/2]
    cos, sin = ang.cos()[:, None, :].to(x.dtype), ang.sin()[:, None, :].to(x.dtype)
    out = []
    start, a0 = 0, 0
    for dim in sections:
        seg = x[..., start:start + dim]
        x1, x2 = seg[..., : dim // 2], seg[..., dim // 2:]
        c, s = cos[..., a0:a0 + dim // 2], sin[..., a0:a0 + dim // 2]
        out += [x1 * c - x2 * s, x2 * c + x1 * s]
        start += dim
        a0 += dim // 2
    return torch.cat(out, dim=-1)


def rope_qk_torch(q, k, cu_seqlens, grid, sections, theta=10000.0, positions=None):
    """The reference for q [N, H, D] and k [N, Hk, D] (or None) -> (q rotated, k rotated or None)."""
    rot = (lambda x: None if x is None else apply_rope_torch(x, cu_seqlens, grid, sections, theta, positions))
    return rot(q), rot(k)


class RopeFunction(torch.autograd.Function):
    """One autograd.Function for every kernel backend of RoPE on q and k together. `kernel(q, k,
    cu_seqlens, grid, sections, theta, inverse)` rotates both by +angle (inverse=False) or -angle;
    the rotation is orthogonal, so the backward is the same kernel with inverse=True. Nothing is
    saved but the (integer) packing."""

    @staticmethod
    def forward(ctx, q, k, cu_seqlens, grid, sections, theta, kernel):
        ctx.save_for_backward(cu_seqlens, grid)
        ctx.args = (tuple(sections), float(theta), kernel, k is not None)
        return kernel(q.contiguous(), None if k is None else k.contiguous(), cu_seqlens, grid, tuple(sections),
                      float(theta), False)

    @staticmethod
    def backward(ctx, dq, dk):
        cu_seqlens, grid = ctx.saved_tensors
        sections, theta, kernel, has_k = ctx.args
        gq, gk = kernel(dq.contiguous(), dk.contiguous() if has_k else None, cu_seqlens, grid, sections, theta, True)
        return gq, gk, None, None, None, None, None


def _ext_rope(backend: str):
    def kernel(q, k, cu_seqlens, grid, sections, theta, inverse):   # the compiled op rotates one tensor
        rope = _ext.ops().rope
        return (rope(q, cu_seqlens, grid, sections, theta, inverse),
                None if k is None else rope(k, cu_seqlens, grid, sections, theta, inverse))

    def rope_qk(q, k, cu_seqlens, grid, sections, theta=10000.0):
        _ext.backend_for(q, backend)
        return RopeFunction.apply(q, k, cu_seqlens, grid, sections, theta, kernel)
    rope_qk.__name__ = f"rope_qk_{backend}"
    return _ext.for_backend(backend, rope_qk)


def _triton_rope(q, k, cu_seqlens, grid, sections, theta=10000.0):
    from kernels.rope import rope_3d_qk  # imported at first use: Triton fixes interpreted-or-compiled then
    return RopeFunction.apply(q, k, cu_seqlens, grid, sections, theta, rope_3d_qk)


# backend -> rope_qk(q, k or None, cu_seqlens, grid, sections, theta) -> (q', k' or None): one launch
# per tensor (cpp, cuda) or one for both (triton's fused q+k kernel).
IMPLEMENTATIONS = {"torch": rope_qk_torch, "cpp": _ext_rope("cpp"), "cuda": _ext_rope("cuda")}
try:  # registered only where Triton imports (on CPU it runs only under TRITON_INTERPRET=1)
    import triton  # noqa: F401
    IMPLEMENTATIONS["triton"] = _triton_rope
except ImportError:
    IMPLEMENTATIONS["triton"] = None
