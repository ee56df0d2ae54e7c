"""Spacetime patches: per-sample latent [C, T, H, W] <-> packed tokens [n, C*pt*ph*pw]."""
from __future__ import annotations

import torch

from sora.ops import _ext


def patch_grid(latent_shape, patch) -> tuple[int, int, int]:
    _, t, h, w = latent_shape
    pt, ph, pw = patch
    if t % pt or h % ph or w % pw:
        raise ValueError(f"latent {tuple(latent_shape)} is not divisible by patch {tuple(patch)}")
    return t // pt, h // ph, w // pw


def patchify(latent: torch.Tensor, patch) -> torch.Tensor:
    """[C, T, H, W] -> [T'*H'*W', C*pt*ph*pw], tokens in (t, h, w) row-major order."""
    c = latent.shape[0]
    gt, gh, gw = patch_grid(latent.shape, patch)
    pt, ph, pw = patch
    x = latent.reshape(c, gt, pt, gh, ph, gw, pw)
    x = x.permute(1, 3, 5, 0, 2, 4, 6)                     # [gt, gh, gw, C, pt, ph, pw]
    return x.reshape(gt * gh * gw, c * pt * ph * pw)


def unpatchify(tokens: torch.Tensor, grid, patch, channels: int) -> torch.Tensor:
    """[T'*H'*W', C*pt*ph*pw] -> [C, T, H, W]."""
    gt, gh, gw = (int(g) for g in grid)
    pt, ph, pw = patch
    if tokens.shape != (gt * gh * gw, channels * pt * ph * pw):
        raise ValueError(f"tokens {tuple(tokens.shape)} do not match grid {grid} x patch {patch} x {channels} channels")
    x = tokens.reshape(gt, gh, gw, channels, pt, ph, pw)
    x = x.permute(3, 0, 4, 1, 5, 2, 6)                     # [C, gt, pt, gh, ph, gw, pw]
    return x.reshape(channels, gt * pt, gh * ph, gw * pw)


# ---- packed: all samples of a micro-batch at once -------------------------------------------------
# `latents` is every sample's [C, T, H, W] latent flattened and concatenated (sample b starts at
# element cu_seqlens[b] * C*pt*ph*pw, since a sample has as many latent values as token values);
# `grid` [B, 3] int32 is each sample's token grid. Patchify and unpatchify are each other's inverse
# and adjoint (a permutation), so each one's backward is the other.

def patchify_packed_torch(latents: torch.Tensor, cu_seqlens: torch.Tensor, grid: torch.Tensor, patch,
                          channels: int) -> torch.Tensor:
    """latents [N*P] -> tokens [N, P], P = channels*pt*ph*pw."""
    pt, ph, pw = patch
    p = channels * pt * ph * pw
    cu = cu_seqlens.tolist()
    parts = [patchify(latents[cu[b] * p:cu[b + 1] * p].view(channels, g[0] * pt, g[1] * ph, g[2] * pw), patch)
             for b, g in enumerate(grid.tolist())]
    return torch.cat(parts) if parts else latents.new_empty(0, p)


def unpatchify_packed_torch(tokens: torch.Tensor, cu_seqlens: torch.Tensor, grid: torch.Tensor, patch,
                            channels: int) -> torch.Tensor:
    """tokens [N, P] -> latents [N*P]."""
    cu = cu_seqlens.tolist()
    parts = [unpatchify(tokens[cu[b]:cu[b + 1]], g, patch, channels).reshape(-1) for b, g in enumerate(grid.tolist())]
    return torch.cat(parts) if parts else tokens.new_empty(0)


class PackedPatchFunction(torch.autograd.Function):
    """The one autograd.Function of packed patchify and unpatchify, for every kernel backend:
    `kernel` runs the op, `adjoint` (the other direction) its backward."""

    @staticmethod
    def forward(ctx, x, cu_seqlens, grid, patch, channels, kernel, adjoint):
        ctx.save_for_backward(cu_seqlens, grid)
        ctx.args = (tuple(patch), int(channels), adjoint)
        return kernel(x.contiguous(), cu_seqlens, grid, tuple(patch), int(channels))

    @staticmethod
    def backward(ctx, grad):
        cu_seqlens, grid = ctx.saved_tensors
        patch, channels, adjoint = ctx.args
        return adjoint(grad.contiguous(), cu_seqlens, grid, patch, channels), None, None, None, None, None, None


def _ext_patch(backend: str, inverse: bool):
    def run(x, cu_seqlens, grid, patch, channels):
        _ext.backend_for(x, backend)
        ops = _ext.ops()
        kernel, adjoint = (ops.unpatchify, ops.patchify) if inverse else (ops.patchify, ops.unpatchify)
        return PackedPatchFunction.apply(x, cu_seqlens, grid, patch, channels, kernel, adjoint)
    run.__name__ = f"{'unpatchify' if inverse else 'patchify'}_packed_{backend}"
    return _ext.for_backend(backend, run)


def _triton_patch(inverse: bool):
    def run(x, cu_seqlens, grid, patch, channels):
        # imported at first use: Triton fixes interpreted-or-compiled then
        from kernels.patch_embed import patchify_packed, unpatchify_packed
        kernel, adjoint = (unpatchify_packed, patchify_packed) if inverse else (patchify_packed, unpatchify_packed)
        return PackedPatchFunction.apply(x, cu_seqlens, grid, patch, channels, kernel, adjoint)
    try:  # registered only where Triton imports (on CPU it runs only under TRITON_INTERPRET=1)
        import triton  # noqa: F401
    except ImportError:
        return None
    run.__name__ = f"{'unpatchify' if inverse else 'patchify'}_packed_triton"
    return run


PATCHIFY_IMPLEMENTATIONS = {"torch": patchify_packed_torch,
                            "cpp": _ext_patch("cpp", False), "cuda": _ext_patch("cuda", False),
                            "triton": _triton_patch(False)}
UNPATCHIFY_IMPLEMENTATIONS = {"torch": unpatchify_packed_torch,
                              "cpp": _ext_patch("cpp", True), "cuda": _ext_patch("cuda", True),
                              "triton": _triton_patch(True)}
