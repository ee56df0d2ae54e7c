"""3-D rotary position embedding on packed tokens (rotate-half pairing).

The head dim is split into (t, h, w) sections; each token's position comes from cu_seqlens + grid.
"""
from __future__ import annotations

import torch

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


IMPLEMENTATIONS = {"torch": apply_rope_torch}
