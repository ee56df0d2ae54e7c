"""A stand-in for flash-attn's `flash_attn_varlen_func`, for machines without a GPU.

Put `tests/standins` on PYTHONPATH and sora.ops.attention finds it as the `flash_attn` backend.
It takes exactly flash-attn 2's Python signature (q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q
and max_seqlen_k positional and required) and refuses what flash-attn refuses, with its messages
(flash_attn_interface.py + csrc/flash_attn/flash_api.cpp, mha_varlen_fwd): q/k/v float16 or
bfloat16 of one dtype; int32, contiguous cu_seqlens of B+1 >= 2 entries; Python-int max_seqlen
(a custom-op `int` there: a tensor is refused); head dim <= 256; heads a multiple of kv heads;
[total, heads, head_dim] shapes. A last dim that is not contiguous is made contiguous, as
flash-attn's `maybe_contiguous` does. One check is ours, not flash-attn's: max_seqlen_q/k must
cover the longest sample (flash-attn does not check; too small a value silently drops rows).
The device is not checked: this runs on the CPU, where real flash-attn refuses every tensor.

The output is the plain-PyTorch reference computed in float32 (autograd gives the backward).
With FLASH_ATTN_STANDIN_LOG=FILE each call appends one JSON line: q/k shapes, dtype, causal.
"""
from __future__ import annotations

import json
import os

import torch

__version__ = "2.8.3+standin"


def _check(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            raise RuntimeError(f"{name} must have shape (total, num_heads, head_size), got {getattr(t, 'shape', t)}")
    if q.dtype not in (torch.float16, torch.bfloat16):
        raise RuntimeError("FlashAttention only support fp16 and bf16 data type")
    if k.dtype != q.dtype:
        raise RuntimeError("query and key must have the same dtype")
    if v.dtype != q.dtype:
        raise RuntimeError("query and value must have the same dtype")
    for name, cu in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        if not isinstance(cu, torch.Tensor) or cu.dtype != torch.int32:
            raise RuntimeError(f"{name} must have dtype int32")
        if not cu.is_contiguous():
            raise RuntimeError(f"{name} must be contiguous")
        if cu.device != q.device:
            raise RuntimeError(f"{name} must be on the same device as q")
    for name, m in (("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k)):
        if not isinstance(m, int) or isinstance(m, bool):
            raise TypeError(f"{name} must be a Python int (flash-attn's custom op takes `int`), got {type(m).__name__}")
    batch = cu_seqlens_q.numel() - 1
    if batch <= 0:
        raise RuntimeError("batch size must be positive")
    if cu_seqlens_k.numel() != batch + 1:
        raise RuntimeError(f"cu_seqlens_k must have shape ({batch + 1},)")
    if q.shape[2] > 256 or v.shape[2] > 256:
        raise RuntimeError("FlashAttention forward only supports head dimension at most 256")
    if q.shape[1] % k.shape[1]:
        raise RuntimeError("Number of heads in key/value must divide number of heads in query")
    if k.shape[2] != q.shape[2] or k.shape[:2] != v.shape[:2]:
        raise RuntimeError(f"k {tuple(k.shape)} / v {tuple(v.shape)} do not match q {tuple(q.shape)}")
    if int(cu_seqlens_q[-1]) != q.shape[0] or int(cu_seqlens_k[-1]) != k.shape[0]:
        raise RuntimeError("cu_seqlens do not end at the number of tokens")
    longest_q = int((cu_seqlens_q[1:] - cu_seqlens_q[:-1]).max())
    longest_k = int((cu_seqlens_k[1:] - cu_seqlens_k[:-1]).max())
    if max_seqlen_q < longest_q or max_seqlen_k < longest_k:
        raise RuntimeError(f"(stand-in's own check) max_seqlen_q/k ({max_seqlen_q}, {max_seqlen_k}) below the "
                           f"longest sample ({longest_q}, {longest_k}): flash-attn would silently drop rows")
    if dropout_p != 0.0:
        raise RuntimeError("the stand-in implements dropout_p=0 only")


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                           deterministic=False, return_attn_probs=False, block_table=None):
    _check(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p)
    if tuple(window_size) != (-1, -1) or softcap or alibi_slopes is not None or block_table is not None:
        raise RuntimeError("the stand-in implements no window, softcap, ALiBi or paged KV")
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))   # flash-attn's maybe_contiguous
    log = os.environ.get("FLASH_ATTN_STANDIN_LOG")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps({"q": list(q.shape), "k": list(k.shape), "dtype": str(q.dtype),
                                "causal": bool(causal)}) + "\n")
    from sora.ops.attention import varlen_attention_torch
    out = varlen_attention_torch(q.float(), k.float(), v.float(), cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                 max_seqlen_k, softmax_scale=softmax_scale, causal=causal).to(q.dtype)
    return (out, None, None) if return_attn_probs else out
