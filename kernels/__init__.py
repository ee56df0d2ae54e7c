"""Triton kernels: one file per op (kernel -> launcher -> entry point). See ../shared/DESIGN.md.

Importing this package imports Triton; the sora.ops dispatch imports it lazily, at first use.
"""
from kernels.flash_attn import flash_attn_varlen_func

__all__ = ["flash_attn_varlen_func"]
