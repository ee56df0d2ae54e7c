"""Varlen attention over packed sequences, with flash-attn's calling convention.

Reference: exact block-diagonal attention, one SDPA call per sample (plain PyTorch, the CPU path).
Kernel backends (Triton, flash-attn) register in IMPLEMENTATIONS and take the same arguments.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _check(q, k, v, cu_q, cu_k):
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(f"q, k, v must be [total, heads, dim]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"k and v shapes differ: {tuple(k.shape)} vs {tuple(v.shape)}")
    if q.shape[2] != k.shape[2] or q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"q heads {q.shape[1]} must be a multiple of kv heads {k.shape[1]} with equal head dims")
    if cu_q.numel() != cu_k.numel():
        raise ValueError(f"cu_seqlens_q has {cu_q.numel()} entries but cu_seqlens_k has {cu_k.numel()}")
    if int(cu_q[-1]) != q.shape[0] or int(cu_k[-1]) != k.shape[0]:
        raise ValueError(f"cu_seqlens end at ({int(cu_q[-1])}, {int(cu_k[-1])}) but q/k hold ({q.shape[0]}, {k.shape[0]}) tokens")


def varlen_attention_torch(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None, max_seqlen_k=None,
                           dropout_p=0.0, softmax_scale=None, causal=False):
    """q [Nq, H, D], k/v [Nk, Hkv, D] -> [Nq, H, D]; sample b attends only within itself."""
    _check(q, k, v, cu_seqlens_q, cu_seqlens_k)
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    out = torch.empty_like(q)
    bq = cu_seqlens_q.tolist()
    bk = cu_seqlens_k.tolist()
    for b in range(len(bq) - 1):
        qs, qe, ks, ke = bq[b], bq[b + 1], bk[b], bk[b + 1]
        if qe == qs:
            continue
        # 4-D [1, H, L, D]: with 3-D inputs SDPA falls back to its math path on CPU, which keeps
        # the [H, Lq, Lk] probabilities for backward (O(L^2) memory instead of O(L)).
        qb = q[qs:qe].transpose(0, 1)[None]                 # [1, H, Lq, D]
        kb = k[ks:ke].transpose(0, 1)[None]                 # [1, H, Lk, D]
        vb = v[ks:ke].transpose(0, 1)[None]
        mask = None
        if causal:  # bottom-right aligned, as flash-attn
            lq, lk = qe - qs, ke - ks
            i = torch.arange(lq, device=q.device)[:, None]
            j = torch.arange(lk, device=q.device)[None, :]
            mask = j <= i + (lk - lq)
        ob = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, dropout_p=dropout_p, scale=softmax_scale)
        out[qs:qe] = ob[0].transpose(0, 1)
    return out


IMPLEMENTATIONS = {"torch": varlen_attention_torch}
try:  # optional backend
    from flash_attn import flash_attn_varlen_func as _fa  # type: ignore
    IMPLEMENTATIONS["flash_attn"] = _fa
except Exception:  # noqa: BLE001 - any import failure means "not available"
    IMPLEMENTATIONS["flash_attn"] = None


def _triton_attention(*args, **kwargs):
    # kernels/ is imported at first use: Triton fixes interpreted-or-compiled when it decorates.
    from kernels.flash_attn import flash_attn_varlen_func
    return flash_attn_varlen_func(*args, **kwargs)


try:  # registered only where Triton imports (on CPU it runs only under TRITON_INTERPRET=1)
    import triton  # noqa: F401
    IMPLEMENTATIONS["triton"] = _triton_attention
except ImportError:
    IMPLEMENTATIONS["triton"] = None
