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
                     sections: tuple[int, int, int], theta: float = 10000.0) -> torch.Tensor:
    """x [N, H, D] -> rotated [N, H, D]. Pairs (i, i + D/2) within each section (rotate-half)."""
    n, _, d = x.shape
    if sum(sections) != d or any(s % 2 for s in sections):
        raise ValueError(f"rope sections {sections} must be even and sum to head dim {d}")
    ang = rope_angles(token_positions(cu_seqlens, grid), sections, theta)  # [N, D/2]
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


class RopeFunction(torch.autograd.Function):
    """One autograd.Function for every kernel backend of RoPE. `kernel(x, cu_seqlens, grid,
    sections, theta, inverse)` rotates by +angle (inverse=False) or -angle; the rotation is
    orthogonal, so the backward is the same kernel with inverse=True. Nothing is saved but the
    (integer) packing."""

    @staticmethod
    def forward(ctx, x, cu_seqlens, grid, sections, theta, kernel):
        ctx.save_for_backward(cu_seqlens, grid)
        ctx.args = (tuple(sections), float(theta), kernel)
        return kernel(x.contiguous(), cu_seqlens, grid, tuple(sections), float(theta), False)

    @staticmethod
    def backward(ctx, grad):
        cu_seqlens, grid = ctx.saved_tensors
        sections, theta, kernel = ctx.args
        return kernel(grad.contiguous(), cu_seqlens, grid, sections, theta, True), None, None, None, None, None


def _ext_rope(backend: str):
    def apply_rope(x, cu_seqlens, grid, sections, theta=10000.0):
        _ext.backend_for(x, backend)
        return RopeFunction.apply(x, cu_seqlens, grid, sections, theta, _ext.ops().rope)
    apply_rope.__name__ = f"apply_rope_{backend}"
    return _ext.for_backend(backend, apply_rope)


def _triton_rope(x, cu_seqlens, grid, sections, theta=10000.0):
    from kernels.rope import rope_3d  # imported at first use: Triton fixes interpreted-or-compiled then
    return RopeFunction.apply(x, cu_seqlens, grid, sections, theta, rope_3d)


IMPLEMENTATIONS = {"torch": apply_rope_torch, "cpp": _ext_rope("cpp"), "cuda": _ext_rope("cuda")}
try:  # registered only where Triton imports (on CPU it runs only under TRITON_INTERPRET=1)
    import triton  # noqa: F401
    IMPLEMENTATIONS["triton"] = _triton_rope
except ImportError:
    IMPLEMENTATIONS["triton"] = None
