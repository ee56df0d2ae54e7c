"""Varlen FlashAttention (forward + backward) in Triton, with flash-attn's calling convention.

q [Nq, H, D], k/v [Nk, Hkv, D] packed by int32 cu_seqlens_q / cu_seqlens_k ([B+1] each); sample b's
queries attend only to sample b's keys. GQA when H is a multiple of Hkv. Causal masks are
bottom-right aligned (query i of a sample sees key j iff j <= i + Lk - Lq), as flash-attn.
A query row with no visible key gets output 0 and log-sum-exp +inf (flash-attn's convention).

Forward: one program per (BLOCK_M queries, sample, head); online softmax in base 2.
Backward (FA2 split): dK/dV with one program per (BLOCK_N keys, sample, kv head) that loops over
the group's query heads, dQ with one program per query block: no atomics, so it is deterministic.
Blocks of keys that need no mask run a mask-free loop; only boundary/diagonal blocks pay for it.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from kernels._common import check_cu_seqlens, empty, empty_like, launch, tma_ready, tuned, validate_values

LOG2E = 1.4426950408889634


def _dot_precision(dtype):
    # fp32 is the checking dtype: keep it exact (tf32 would cost ~3e-4 relative error).
    return "ieee" if dtype == torch.float32 else "tf32"


# ----------------------------------------------------------------------------- forward
# Tiles move through per-sample TMA tensor descriptors (shape = the sample's rows x head_dim): loads
# past a sample's end or past head_dim read zeros and stores there are dropped, with no per-element
# address tensors (those cost ~120 registers per thread at 128x128 tiles and spilled).

@triton.jit
def _desc(base, rows, stride, HEAD_DIM: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    return tl.make_tensor_descriptor(base, shape=[rows, HEAD_DIM], strides=[stride, 1],
                                     block_shape=[BLOCK_R, BLOCK_D])


@triton.jit
def _fwd_inner(acc, l_i, m_i, q, k_desc, v_desc, lo, hi, offs_m, offs_n, k_len, diag, qk_scale,
               BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, MASK: tl.constexpr, DOT_PREC: tl.constexpr):
    for start_n in range(lo, hi, BLOCK_N):
        k = k_desc.load([start_n, 0])                                          # [BN, BD]
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale      # [BM, BN], log2 units
        if MASK:
            cols = start_n + offs_n
            ok = cols[None, :] < k_len
            if CAUSAL:
                ok = ok & (cols[None, :] <= offs_m[:, None] + diag)
            s = tl.where(ok, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)                 # rows with no key yet
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = v_desc.load([start_n, 0])                                          # [BN, BD]
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PREC)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _fwd_kernel(Q, K, V, O, LSE, CU_Q, CU_K,
                stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
                stride_ot, stride_oh, stride_lh, qk_scale,
                GROUPS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                CAUSAL: tl.constexpr, DOT_PREC: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m, b, h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    q_start = tl.load(CU_Q + b)
    q_len = tl.load(CU_Q + b + 1) - q_start
    start_m = pid_m * BLOCK_M
    if start_m >= q_len:
        return
    k_start = tl.load(CU_K + b)
    k_len = tl.load(CU_K + b + 1) - k_start
    hk = h // GROUPS
    q_desc = _desc(Q + q_start.to(tl.int64) * stride_qt + h * stride_qh, q_len, stride_qt, HEAD_DIM, BLOCK_M, BLOCK_D)
    k_desc = _desc(K + k_start.to(tl.int64) * stride_kt + hk * stride_kh, k_len, stride_kt, HEAD_DIM, BLOCK_N, BLOCK_D)
    v_desc = _desc(V + k_start.to(tl.int64) * stride_vt + hk * stride_vh, k_len, stride_vt, HEAD_DIM, BLOCK_N, BLOCK_D)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    q = q_desc.load([start_m, 0])                                              # [BM, BD]

    diag = k_len - q_len
    if CAUSAL:  # keys < full_hi are visible to every row of the block; keys >= hi to none
        hi = tl.maximum(tl.minimum(k_len, start_m + BLOCK_M + diag), 0)
        full_hi = tl.maximum(tl.minimum(k_len, start_m + 1 + diag), 0) // BLOCK_N * BLOCK_N
    else:
        hi = k_len
        full_hi = k_len // BLOCK_N * BLOCK_N
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_desc, v_desc, 0, full_hi, offs_m, offs_n, k_len, diag,
                               qk_scale, BLOCK_N, CAUSAL, False, DOT_PREC)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_desc, v_desc, full_hi, hi, offs_m, offs_n, k_len, diag,
                               qk_scale, BLOCK_N, CAUSAL, True, DOT_PREC)
    no_key = l_i == 0.0
    l_safe = tl.where(no_key, 1.0, l_i)
    out = acc / l_safe[:, None]
    lse = tl.where(no_key, float("inf"), (m_i + tl.math.log2(l_safe)) / 1.4426950408889634)  # natural log
    o_desc = _desc(O + q_start.to(tl.int64) * stride_ot + h * stride_oh, q_len, stride_ot, HEAD_DIM, BLOCK_M, BLOCK_D)
    o_desc.store([start_m, 0], out.to(O.dtype.element_ty))
    tl.store(LSE + h * stride_lh + q_start + offs_m, lse, mask=offs_m < q_len)


# Hopper: 128-row query tiles, 8 warps; the autotuner drops configs that do not fit (shared memory).
_FWD_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
    for bm, bn, w, s in [(128, 128, 8, 2), (128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 4, 3), (64, 64, 4, 3)]
]
_INTERP = {"BLOCK_M": 16, "BLOCK_N": 16}
_fwd = tuned(_fwd_kernel, _FWD_CONFIGS, ["BLOCK_D", "GROUPS", "CAUSAL", "DOT_PREC"], _INTERP)


# ---------------------------------------------------------------------------- backward

@triton.jit
def _bwd_preprocess(O, DO, DELTA, N, stride_ot, stride_oh, stride_dot, stride_doh, stride_dh,
                    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr):
    """delta[h, t] = sum_d O[t, h, d] * dO[t, h, d]  (fp32)."""
    pid, h = tl.program_id(0), tl.program_id(1)
    offs_t = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_d = tl.arange(0, BLOCK_D)
    m = (offs_t[:, None] < N) & (offs_d[None, :] < HEAD_DIM)
    t64 = offs_t.to(tl.int64)[:, None]
    o = tl.load(O + t64 * stride_ot + h * stride_oh + offs_d[None, :], mask=m, other=0.0).to(tl.float32)
    do = tl.load(DO + t64 * stride_dot + h * stride_doh + offs_d[None, :], mask=m, other=0.0).to(tl.float32)
    tl.store(DELTA + h * stride_dh + offs_t, tl.sum(o * do, 1), mask=offs_t < N)


@triton.jit
def _bwd_dkdv_inner(dk, dv, k, v, q_desc, do_desc, LSE, DELTA, q_start, q_len, h, lo, hi, stride_lh,
                    offs_n, offs_m, diag, qk_scale,
                    BLOCK_M: tl.constexpr, CAUSAL_MASK: tl.constexpr, DOT_PREC: tl.constexpr):
    for start_m in range(lo, hi, BLOCK_M):
        rows = start_m + offs_m                                                # [BM]
        r_ok = rows < q_len
        q = q_desc.load([start_m, 0])                                          # [BM, BD], zeros past q_len
        do = do_desc.load([start_m, 0])
        # lse = +inf off the end (and on key-less rows) makes p exactly 0 there.
        lse2 = tl.load(LSE + h * stride_lh + q_start + rows, mask=r_ok, other=float("inf")) * 1.4426950408889634
        delta = tl.load(DELTA + h * stride_lh + q_start + rows, mask=r_ok, other=0.0)
        s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PREC) * qk_scale    # [BN, BM]
        p_t = tl.math.exp2(s_t - lse2[None, :])
        if CAUSAL_MASK:
            p_t = tl.where(offs_n[:, None] <= rows[None, :] + diag, p_t, 0.0)
        dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=DOT_PREC)       # [BN, BD]
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)              # [BN, BM]
        ds_t = p_t * (dp_t - delta[None, :])
        dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=DOT_PREC)        # [BN, BD]
    return dk, dv


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, DK, DV, LSE, DELTA, CU_Q, CU_K,
                     stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
                     stride_dot, stride_doh, stride_dkt, stride_dkh, stride_dvt, stride_dvh,
                     stride_lh, softmax_scale, qk_scale,
                     GROUPS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                     CAUSAL: tl.constexpr, DOT_PREC: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_n, b, hk = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    k_start = tl.load(CU_K + b)
    k_len = tl.load(CU_K + b + 1) - k_start
    start_n = pid_n * BLOCK_N
    if start_n >= k_len:
        return
    q_start = tl.load(CU_Q + b)
    q_len = tl.load(CU_Q + b + 1) - q_start
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    k0 = k_start.to(tl.int64)
    k = _desc(K + k0 * stride_kt + hk * stride_kh, k_len, stride_kt, HEAD_DIM, BLOCK_N, BLOCK_D).load([start_n, 0])
    v = _desc(V + k0 * stride_vt + hk * stride_vh, k_len, stride_vt, HEAD_DIM, BLOCK_N, BLOCK_D).load([start_n, 0])
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    diag = k_len - q_len
    if CAUSAL:  # rows < lo see none of these keys; rows >= mid see all of them
        lo = tl.maximum(start_n - diag, 0) // BLOCK_M * BLOCK_M
        mid = lo + tl.cdiv(tl.maximum(start_n + BLOCK_N - 1 - diag - lo, 0), BLOCK_M) * BLOCK_M
        mid = tl.minimum(mid, tl.cdiv(q_len, BLOCK_M) * BLOCK_M)
    else:
        lo = 0
        mid = 0
    q0 = q_start.to(tl.int64)
    for g in range(GROUPS):
        h = hk * GROUPS + g
        q_desc = _desc(Q + q0 * stride_qt + h * stride_qh, q_len, stride_qt, HEAD_DIM, BLOCK_M, BLOCK_D)
        do_desc = _desc(DO + q0 * stride_dot + h * stride_doh, q_len, stride_dot, HEAD_DIM, BLOCK_M, BLOCK_D)
        dk, dv = _bwd_dkdv_inner(dk, dv, k, v, q_desc, do_desc, LSE, DELTA, q_start, q_len, h, lo, mid, stride_lh,
                                 offs_n, offs_m, diag, qk_scale, BLOCK_M, True, DOT_PREC)
        dk, dv = _bwd_dkdv_inner(dk, dv, k, v, q_desc, do_desc, LSE, DELTA, q_start, q_len, h, mid, q_len, stride_lh,
                                 offs_n, offs_m, diag, qk_scale, BLOCK_M, False, DOT_PREC)
    dk = dk * softmax_scale
    _desc(DK + k0 * stride_dkt + hk * stride_dkh, k_len, stride_dkt, HEAD_DIM, BLOCK_N, BLOCK_D).store(
        [start_n, 0], dk.to(DK.dtype.element_ty))
    _desc(DV + k0 * stride_dvt + hk * stride_dvh, k_len, stride_dvt, HEAD_DIM, BLOCK_N, BLOCK_D).store(
        [start_n, 0], dv.to(DV.dtype.element_ty))


@triton.jit
def _bwd_dq_inner(dq, q, do, lse2, delta, k_desc, v_desc, lo, hi, offs_m, offs_n, k_len, diag, qk_scale,
                  BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, MASK: tl.constexpr, DOT_PREC: tl.constexpr):
    for start_n in range(lo, hi, BLOCK_N):
        k = k_desc.load([start_n, 0])                                          # [BN, BD]
        v = v_desc.load([start_n, 0])
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale      # [BM, BN]
        p = tl.math.exp2(s - lse2[:, None])
        if MASK:
            cols = start_n + offs_n
            ok = cols[None, :] < k_len
            if CAUSAL:
                ok = ok & (cols[None, :] <= offs_m[:, None] + diag)
            p = tl.where(ok, p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)               # [BM, BN]
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PREC)          # [BM, BD]
    return dq


@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, DQ, LSE, DELTA, CU_Q, CU_K,
                   stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
                   stride_dot, stride_doh, stride_dqt, stride_dqh,
                   stride_lh, softmax_scale, qk_scale,
                   GROUPS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                   CAUSAL: tl.constexpr, DOT_PREC: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m, b, h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    q_start = tl.load(CU_Q + b)
    q_len = tl.load(CU_Q + b + 1) - q_start
    start_m = pid_m * BLOCK_M
    if start_m >= q_len:
        return
    k_start = tl.load(CU_K + b)
    k_len = tl.load(CU_K + b + 1) - k_start
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    row_ok = offs_m < q_len
    q0, k0 = q_start.to(tl.int64), k_start.to(tl.int64)
    q = _desc(Q + q0 * stride_qt + h * stride_qh, q_len, stride_qt, HEAD_DIM, BLOCK_M, BLOCK_D).load([start_m, 0])
    do = _desc(DO + q0 * stride_dot + h * stride_doh, q_len, stride_dot, HEAD_DIM, BLOCK_M, BLOCK_D).load([start_m, 0])
    lse2 = tl.load(LSE + h * stride_lh + q_start + offs_m, mask=row_ok, other=float("inf")) * 1.4426950408889634
    delta = tl.load(DELTA + h * stride_lh + q_start + offs_m, mask=row_ok, other=0.0)
    hk = h // GROUPS
    k_desc = _desc(K + k0 * stride_kt + hk * stride_kh, k_len, stride_kt, HEAD_DIM, BLOCK_N, BLOCK_D)
    v_desc = _desc(V + k0 * stride_vt + hk * stride_vh, k_len, stride_vt, HEAD_DIM, BLOCK_N, BLOCK_D)
    diag = k_len - q_len
    if CAUSAL:
        hi = tl.maximum(tl.minimum(k_len, start_m + BLOCK_M + diag), 0)
        full_hi = tl.maximum(tl.minimum(k_len, start_m + 1 + diag), 0) // BLOCK_N * BLOCK_N
    else:
        hi = k_len
        full_hi = k_len // BLOCK_N * BLOCK_N
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    dq = _bwd_dq_inner(dq, q, do, lse2, delta, k_desc, v_desc, 0, full_hi, offs_m, offs_n, k_len, diag, qk_scale,
                       BLOCK_N, CAUSAL, False, DOT_PREC)
    dq = _bwd_dq_inner(dq, q, do, lse2, delta, k_desc, v_desc, full_hi, hi, offs_m, offs_n, k_len, diag, qk_scale,
                       BLOCK_N, CAUSAL, True, DOT_PREC)
    dq = dq * softmax_scale
    _desc(DQ + q0 * stride_dqt + h * stride_dqh, q_len, stride_dqt, HEAD_DIM, BLOCK_M, BLOCK_D).store(
        [start_m, 0], dq.to(DQ.dtype.element_ty))


_BWD_CONFIGS = [  # (queries, keys) per dK/dV program; dQ uses the transpose
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
    for bm, bn, w, s in [(32, 128, 8, 3), (64, 128, 8, 2), (64, 64, 4, 3), (32, 64, 4, 3), (64, 128, 8, 3)]
]
_BWD_KEY = ["BLOCK_D", "GROUPS", "CAUSAL", "DOT_PREC"]
_dkdv = tuned(_bwd_dkdv_kernel, _BWD_CONFIGS, _BWD_KEY, _INTERP)
_dq = tuned(_bwd_dq_kernel, [triton.Config({"BLOCK_M": c.kwargs["BLOCK_N"], "BLOCK_N": c.kwargs["BLOCK_M"]},
                                           num_warps=c.num_warps, num_stages=c.num_stages) for c in _BWD_CONFIGS],
            _BWD_KEY, _INTERP)


# ---------------------------------------------------------------------------- launchers

def _check(q, k, v, cu_q, cu_k, dropout_p):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            raise ValueError(f"{name} must be a [total, heads, head_dim] tensor, got {getattr(t, 'shape', type(t))}")
        if t.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise ValueError(f"{name} must be float16, bfloat16 or float32, got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype) or not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must share dtype and device, got {q.dtype}/{k.dtype}/{v.dtype}")
    if k.shape != v.shape:
        raise ValueError(f"k and v shapes differ: {tuple(k.shape)} vs {tuple(v.shape)}")
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"q head_dim {q.shape[2]} != k head_dim {k.shape[2]}")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"q heads {q.shape[1]} must be a multiple of k/v heads {k.shape[1]}")
    if q.shape[2] > 256 or q.shape[2] % 8:
        raise ValueError(f"head_dim {q.shape[2]} must be a multiple of 8 and at most 256 (TMA rows of 16 bytes)")
    check_cu_seqlens("cu_seqlens_q", cu_q, q.shape[0], q.device)
    check_cu_seqlens("cu_seqlens_k", cu_k, k.shape[0], q.device)
    if cu_q.numel() != cu_k.numel():
        raise ValueError(f"cu_seqlens_q has {cu_q.numel()} entries but cu_seqlens_k has {cu_k.numel()}")
    if dropout_p != 0.0:
        raise ValueError(f"dropout_p={dropout_p}: only 0.0 is supported")


def _forward(q, k, v, cu_q, cu_k, max_q, softmax_scale, causal):
    nq, h, d = q.shape
    b = cu_q.numel() - 1
    o = empty_like(q)                                                   # [Nq, H, D]
    lse = empty(h, nq, device=q.device, dtype=torch.float32)           # [H, Nq]
    if nq == 0:
        return o, lse
    _fwd(lambda m: (triton.cdiv(max_q, m["BLOCK_M"]), b, h),
         q, k, v, o, lse, cu_q, cu_k,
         q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
         o.stride(0), o.stride(1), lse.stride(0), softmax_scale * LOG2E,
         GROUPS=h // k.shape[1], HEAD_DIM=d, BLOCK_D=max(16, triton.next_power_of_2(d)),
         CAUSAL=causal, DOT_PREC=_dot_precision(q.dtype))
    return o, lse


def _backward(do, q, k, v, o, lse, cu_q, cu_k, max_q, max_k, softmax_scale, causal):
    nq, h, d = q.shape
    nk, hkv, _ = k.shape
    b = cu_q.numel() - 1
    do = tma_ready(do)
    dq, dk, dv = empty_like(q), empty_like(k), empty_like(v)
    if nk == 0 or nq == 0:  # nothing attends: all gradients are zero
        return dq.zero_(), dk.zero_(), dv.zero_()
    block_d = max(16, triton.next_power_of_2(d))
    delta = empty_like(lse)                                             # [H, Nq]
    launch(_bwd_preprocess, (triton.cdiv(nq, 64), h), o, do, delta, nq, o.stride(0), o.stride(1),
           do.stride(0), do.stride(1), delta.stride(0), HEAD_DIM=d, BLOCK_D=block_d, BLOCK_T=64)
    common = dict(GROUPS=h // hkv, HEAD_DIM=d, BLOCK_D=block_d, CAUSAL=causal, DOT_PREC=_dot_precision(q.dtype))
    _dkdv(lambda m: (triton.cdiv(max_k, m["BLOCK_N"]), b, hkv),
          q, k, v, do, dk, dv, lse, delta, cu_q, cu_k,
          q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
          do.stride(0), do.stride(1), dk.stride(0), dk.stride(1), dv.stride(0), dv.stride(1),
          lse.stride(0), softmax_scale, softmax_scale * LOG2E, **common)
    _dq(lambda m: (triton.cdiv(max_q, m["BLOCK_M"]), b, h),
        q, k, v, do, dq, lse, delta, cu_q, cu_k,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        do.stride(0), do.stride(1), dq.stride(0), dq.stride(1),
        lse.stride(0), softmax_scale, softmax_scale * LOG2E, **common)
    return dq, dk, dv


class FlashAttnVarlenFunc(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale, causal):
        o, lse = _forward(q, k, v, cu_q, cu_k, max_q, softmax_scale, causal)
        ctx.save_for_backward(q, k, v, o, lse, cu_q, cu_k)
        ctx.args = (max_q, max_k, softmax_scale, causal)
        ctx.mark_non_differentiable(lse)
        return o, lse

    @staticmethod
    def backward(ctx, do, _dlse):
        q, k, v, o, lse, cu_q, cu_k = ctx.saved_tensors
        dq, dk, dv = _backward(do, q, k, v, o, lse, cu_q, cu_k, *ctx.args)
        return dq, dk, dv, None, None, None, None, None, None


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                           dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                           softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False,
                           return_lse=False):
    """flash-attn's varlen entry point: q [Nq, H, D], k/v [Nk, Hkv, D] -> out [Nq, H, D].

    `return_attn_probs=True` returns (out, softmax_lse [H, Nq] float32, None) as flash-attn does
    (no probabilities are materialised); `return_lse=True` returns (out, softmax_lse).
    The backward pass is always deterministic, so `deterministic` is accepted and ignored.
    """
    _check(q, k, v, cu_seqlens_q, cu_seqlens_k, dropout_p)
    if tuple(window_size) != (-1, -1) or softcap != 0.0 or alibi_slopes is not None:
        raise ValueError("window_size, softcap and alibi_slopes are not supported by the Triton backend")
    if validate_values(q):  # reads cu_seqlens back to the host: skipped on GPUs unless asked for
        lens_q = cu_seqlens_q[1:] - cu_seqlens_q[:-1]
        lens_k = cu_seqlens_k[1:] - cu_seqlens_k[:-1]
        if int(max_seqlen_q) < int(lens_q.max()) or int(max_seqlen_k) < int(lens_k.max()):
            raise ValueError(f"max_seqlen_q/k ({max_seqlen_q}, {max_seqlen_k}) are below the longest sample "
                             f"({int(lens_q.max())}, {int(lens_k.max())})")
    scale = 1.0 / math.sqrt(q.shape[-1]) if softmax_scale is None else float(softmax_scale)
    out, lse = FlashAttnVarlenFunc.apply(tma_ready(q), tma_ready(k), tma_ready(v),
                                         cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q), int(max_seqlen_k),
                                         scale, bool(causal))
    if return_attn_probs:
        return out, lse, None
    return (out, lse) if return_lse else out
