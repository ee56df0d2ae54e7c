"""Patch embedding on packed latents: patchify + linear, and its inverse (linear + unpatchify).

Latents are packed as in sora.ops.patchify (every sample's [C, T, H, W] flattened and
concatenated). The reference composes the packed patchify with F.linear; the Triton backend
fuses them (kernels/patch_embed.py). Not wired into the DiT yet: its loader patchifies on the host.
"""
from __future__ import annotations

import torch.nn.functional as F

from sora.ops.patchify import patchify_packed_torch, unpatchify_packed_torch


def patch_embed_torch(latents, cu_seqlens, grid, patch, channels, weight, bias=None):
    """latents [N*P], weight [D, P], bias [D] -> tokens [N, D]."""
    return F.linear(patchify_packed_torch(latents, cu_seqlens, grid, patch, channels), weight, bias)


def patch_unembed_torch(x, cu_seqlens, grid, patch, channels, weight, bias=None):
    """x [N, D], weight [P, D], bias [P] -> latents [N*P]."""
    return unpatchify_packed_torch(F.linear(x, weight, bias), cu_seqlens, grid, patch, channels)


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


IMPLEMENTATIONS = {"torch": patch_embed_torch, "triton": _triton("patch_embed")}
INVERSE_IMPLEMENTATIONS = {"torch": patch_unembed_torch, "triton": _triton("patch_unembed")}
