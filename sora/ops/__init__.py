"""One dispatch point per op. `select_kernels` is called once when a model is built; the model's
ops then take the pack's `PackedLayout` (sora/ops/layout.py) and read what their backend needs
from it: fused kernels derive token indices from cu_seqlens + grid in registers, the torch
references read the layout's materialised indices."""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch

from sora.ops import adaln, attention, packing_index, patch_embed, patchify, rope
from sora.ops.backend import BackendUnavailable, log, log_choice, resolve_backend
from sora.ops.layout import PackedLayout, build_layout, slice_layout

__all__ = ["Kernels", "PackedLayout", "select_kernels", "build_layout", "slice_layout"]

OPS = {"attention": attention.IMPLEMENTATIONS, "rope": rope.IMPLEMENTATIONS, "adaln": adaln.IMPLEMENTATIONS,
       "patch_embed": patch_embed.IMPLEMENTATIONS, "patch_unembed": patch_embed.INVERSE_IMPLEMENTATIONS,
       "patchify": patchify.PATCHIFY_IMPLEMENTATIONS, "unpatchify": patchify.UNPATCHIFY_IMPLEMENTATIONS,
       "packing_index": packing_index.IMPLEMENTATIONS}


@dataclass(frozen=True)
class Kernels:
    """The model's ops, each served by the backend chosen for it (`names`)."""
    names: dict
    # Attention keeps flash-attn's calling convention (cross-attention and the text encoder call it).
    attention: Callable
    # RoPE on q and k, then attention over whole samples. One callable so that sequence
    # parallelism can wrap both: after its all-to-all every rank holds whole samples.
    self_attention: Callable | None = None

    def __post_init__(self):
        if self.self_attention is None:
            object.__setattr__(self, "self_attention", partial(rope_then_attention, self))

    def _impl(self, op: str) -> Callable:
        return OPS[op][self.names[op]]

    def layout(self, cu_seqlens: torch.Tensor, grid: torch.Tensor) -> PackedLayout:
        """The layout of a pack of whole samples, its token indices derived once here."""
        return build_layout(cu_seqlens, grid, self._impl("packing_index"))

    def rope_qk(self, q, k, layout: PackedLayout, sections, theta):
        """q [N, H, Dh], k [N, Hk, Dh] of whole samples -> both rotated by their 3-D positions."""
        kw = {"positions": layout.positions} if self.names["rope"] == "torch" else {}
        return self._impl("rope")(q, k, layout.cu_seqlens, layout.grid, sections, theta, **kw)

    def adaln(self, x, shift, scale, layout: PackedLayout):
        """x [L, D], shift/scale [S, D] per segment -> LayerNorm(x) * (1 + scale) + shift. `layout`: a
        PackedLayout, or any runs of tokens with cu_seqlens and sample_index (dit.CondSegments)."""
        kw = {"sample": layout.sample_index} if self.names["adaln"] == "torch" else {}
        return self._impl("adaln")(x, shift, scale, layout.cu_seqlens, **kw)

    def patch_embed(self, latents, layout: PackedLayout, patch, channels, weight, bias):
        """latents [N*P] packed (every sample's [C, T, H, W] flattened) -> this layout's tokens [L, D]."""
        if layout.is_slice:
            return patch_embed.embed_slice(self._impl("patchify"), latents, layout, patch, channels, weight, bias)
        return self._impl("patch_embed")(latents, layout.cu_seqlens, layout.grid, patch, channels, weight, bias)

    def patch_unembed(self, x, layout: PackedLayout, patch, channels, weight, bias, num_latent: int):
        """tokens [L, D] -> packed latents [num_latent] (a slice fills only its own tokens' values)."""
        if layout.is_slice:
            return patch_embed.unembed_slice(self._impl("unpatchify"), x, layout, patch, channels, weight, bias,
                                             num_latent)
        return self._impl("patch_unembed")(x, layout.cu_seqlens, layout.grid, patch, channels, weight, bias)

    def unpatchify(self, tokens, layout: PackedLayout, patch, channels):
        """Per-token values [N, P] of whole samples -> packed latents [N*P] (masks, noise)."""
        return self._impl("unpatchify")(tokens, layout.cu_seqlens, layout.grid, patch, channels)


def rope_then_attention(kernels: Kernels, q, k, v, layout: PackedLayout, sections, theta):
    """q, k, v [N, H, Dh] of whole samples -> [N, H, Dh]."""
    q, k = kernels.rope_qk(q, k, layout, sections, theta)
    cu, n = layout.cu_seqlens, layout.max_seqlen
    return kernels.attention(q, k, v, cu, cu, n, n)


def select_kernels(backend: str | None = None, configured: str | None = None, device: str = "cpu") -> Kernels:
    """Backends for the model's ops on `device` ("cpu", "cuda", "cuda:1", ...).

    A named backend serves every op it implements; an op it lacks (attention has no `cpp`, say)
    takes what `auto` would, and the log says so. A backend serving no op here is an error.
    """
    names, fallbacks, errors = {}, [], []
    for op, impls in OPS.items():
        try:
            names[op] = resolve_backend(op, impls, backend, configured, device)
        except BackendUnavailable as e:
            if "unknown kernel backend" in str(e):
                raise
            errors.append(e)
            names[op] = resolve_backend(op, impls, "auto", None, device)
            fallbacks.append(op)
    if len(errors) == len(OPS):
        raise errors[0]
    if fallbacks:
        log.info("the chosen kernel backend has no %s here: %s", ", ".join(fallbacks), "; ".join(str(e) for e in errors))
    log_choice(names)
    return Kernels(names=names, attention=attention.IMPLEMENTATIONS[names["attention"]])
