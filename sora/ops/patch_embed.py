"""Patch embedding on packed latents: patchify + linear, and its inverse (linear + unpatchify).

This is how the DiT enters and leaves token space. Latents are packed as in sora.ops.patchify:
every sample's [C, T, H, W] flattened and concatenated. The reference composes the packed
patchify with F.linear; the Triton backend fuses them into a gather-GEMM and a GEMM-scatter
(kernels/patch_embed.py); the `cpp`/`cuda` backends run the compiled patchify, then the GEMM.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from sora.ops import patchify as patchify_op
from sora.ops.patchify import patchify_packed_torch, unpatchify_packed_torch


def patch_embed_torch(latents, cu_seqlens, grid, patch, channels, weight, bias=None):
    """latents [N*P], weight [D, P], bias [D] -> tokens [N, D]."""
    return F.linear(patchify_packed_torch(latents, cu_seqlens, grid, patch, channels), weight, bias)


def patch_unembed_torch(x, cu_seqlens, grid, patch, channels, weight, bias=None):
    """x [N, D], weight [P, D], bias [P] -> latents [N*P]."""
    return unpatchify_packed_torch(F.linear(x, weight, bias), cu_seqlens, grid, patch, channels)


def _ext(backend: str, inverse: bool):
    """The compiled patchify composed with the GEMM (the C++/CUDA kernels do the data movement)."""
    move = (patchify_op.UNPATCHIFY_IMPLEMENTATIONS if inverse else patchify_op.PATCHIFY_IMPLEMENTATIONS)[backend]
    if move is None:
        return None

    def run(t, cu_seqlens, grid, patch, channels, weight, bias=None):
        if inverse:
            return move(F.linear(t, weight, bias), cu_seqlens, grid, patch, channels)
        return F.linear(move(t, cu_seqlens, grid, patch, channels), weight, bias)
    run.__name__ = f"{'patch_unembed' if inverse else 'patch_embed'}_{backend}"
    return run


def _triton(name):
    def run(*args, **kwargs):
        import importlib  # the module, not kernels' re-exported function of the same name
        pe = importlib.import_module("kernels.patch_embed")  # at first use: Triton fixes interpreted-or-compiled then
        return getattr(pe, name)(*args, **kwargs)
    try:  # registered only where Triton imports (on CPU it runs only under TRITON_INTERPRET=1)
        import triton  # noqa: F401
    except ImportError:
        return None
    run.__name__ = f"{name}_triton"
    return run


# backend -> fn(latents, cu_seqlens, grid, patch, channels, weight, bias) -> tokens [N, D]; and the inverse.
IMPLEMENTATIONS = {"torch": patch_embed_torch, "cpp": _ext("cpp", False), "cuda": _ext("cuda", False),
                   "triton": _triton("patch_embed")}
INVERSE_IMPLEMENTATIONS = {"torch": patch_unembed_torch, "cpp": _ext("cpp", True), "cuda": _ext("cuda", True),
                           "triton": _triton("patch_unembed")}


def embed_slice(patchify, latents, layout, patch, channels, weight, bias):
    """A sequence-parallel slice's tokens: patchify the whole padded pack (the pad sample's latent is
    zeros), keep this slice's rows, then the GEMM. latents [N*P] of the real pack -> [L, D]."""
    whole, (lo, hi) = layout.whole, layout.rows
    p = weight.shape[1]
    padded = F.pad(latents, (0, whole.num_tokens * p - latents.numel()))              # [N_pad*P]
    return F.linear(patchify(padded, whole.cu_seqlens, whole.grid, patch, channels)[lo:hi], weight, bias)


def unembed_slice(unpatchify, x, layout, patch, channels, weight, bias, num_latent: int):
    """The inverse for a slice: its rows' latent values, zero where other slices' tokens sit.
    x [L, D] -> latents [num_latent] (the real pack's size)."""
    whole, (lo, hi) = layout.whole, layout.rows
    tokens = F.linear(x, weight, bias)                                                  # [L, P]
    tokens = F.pad(tokens, (0, 0, lo, whole.num_tokens - hi))                           # [N_pad, P]
    return unpatchify(tokens, whole.cu_seqlens, whole.grid, patch, channels)[:num_latent]
