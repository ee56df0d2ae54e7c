"""Triton kernels: one file per op (kernel -> launcher -> entry point). See docs/DESIGN.md.

Importing this package imports Triton and decorates the kernels; sora.ops imports it lazily, at
first use (Triton decides interpreted-or-compiled, TRITON_INTERPRET, when it decorates).
"""
from kernels.adaln import adaln_modulate
from kernels.flash_attn import flash_attn_varlen_func
from kernels.patch_embed import patch_embed, patch_unembed, patchify_packed, unpatchify_packed
from kernels.rope import rope_3d_qk

__all__ = ["adaln_modulate", "flash_attn_varlen_func", "patch_embed", "patch_unembed", "patchify_packed",
           "rope_3d_qk", "unpatchify_packed"]
