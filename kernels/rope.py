"""Fused 3-D RoPE on packed tokens in Triton: q (and optionally k) rotated in one pass.

Each token's (t, h, w) is derived in registers from cu_seqlens + grid (binary search for its
sample, then div/mod by the sample's grid): no position tensor is read. The head dim is split
into (t, h, w) sections, each rotated by its own axis' position with frequencies
theta^(-2i/dim), exactly as sora.ops.rope. Pairings: rotate-half within each section
(i, i + dim/2), or interleaved (2i, 2i + 1). The rotation is orthogonal, so the backward is the
same kernel rotating by -angle (inverse=True); nothing but the packing is needed for it.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from kernels._common import check_cu_seqlens, empty_like, launch, sample_of, validate_values

BLOCK_T = 16   # tokens per program: sin/cos computed once, reused by every head of q and k
BLOCK_H = 4    # heads per inner step
NUM_WARPS = 8  # sm_90a (kernels.aot_check): 64 registers, no spills; 4 warps spilled at 128 registers


@triton.jit
def _rope_section(X, OUT, tok64, t_ok, pos, INV, n_heads, stride_xt, stride_xh, stride_ot, stride_oh, sign,
                  OFF: tl.constexpr, HALF: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_H: tl.constexpr,
                  INTERLEAVED: tl.constexpr):
    i = tl.arange(0, BLOCK_P)
    i_ok = i < HALF
    inv = tl.load(INV + OFF // 2 + i, mask=i_ok, other=0.0)                     # [BP]
    ang = pos.to(tl.float32)[:, None] * inv[None, :]                           # [BT, BP]
    c = tl.cos(ang)[:, None, :]                                                 # [BT, 1, BP]
    s = (tl.sin(ang) * sign)[:, None, :]
    if INTERLEAVED:
        c1 = OFF + 2 * i
        c2 = c1 + 1
    else:
        c1 = OFF + i
        c2 = OFF + HALF + i
    for h0 in range(0, n_heads, BLOCK_H):
        hh = h0 + tl.arange(0, BLOCK_H)
        m = t_ok[:, None, None] & (hh < n_heads)[None, :, None] & i_ok[None, None, :]
        xb = X + tok64[:, None, None] * stride_xt + hh[None, :, None] * stride_xh
        x1 = tl.load(xb + c1[None, None, :], mask=m, other=0.0).to(tl.float32)  # [BT, BH, BP]
        x2 = tl.load(xb + c2[None, None, :], mask=m, other=0.0).to(tl.float32)
        ob = OUT + tok64[:, None, None] * stride_ot + hh[None, :, None] * stride_oh
        tl.store(ob + c1[None, None, :], (x1 * c - x2 * s).to(OUT.dtype.element_ty), mask=m)
        tl.store(ob + c2[None, None, :], (x2 * c + x1 * s).to(OUT.dtype.element_ty), mask=m)


@triton.jit
def _rope_kernel(X, OUT, K, KOUT, CU, GRID, INV, n_tokens, n_samples, n_heads, n_kheads,
                 stride_xt, stride_xh, stride_ot, stride_oh, stride_kt, stride_kh, stride_kot, stride_koh,
                 sign, D_T: tl.constexpr, D_H: tl.constexpr, D_W: tl.constexpr, BLOCK_P: tl.constexpr,
                 HAS_K: tl.constexpr, INTERLEAVED: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr):
    tok = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)                    # [BT]
    t_ok = tok < n_tokens
    smp = sample_of(CU, tok, n_samples)
    local = tok - tl.load(CU + smp)
    gh = tl.maximum(tl.load(GRID + smp * 3 + 1), 1)
    gw = tl.maximum(tl.load(GRID + smp * 3 + 2), 1)
    p_w = local % gw
    p_h = (local // gw) % gh
    p_t = local // (gw * gh)
    tok64 = tok.to(tl.int64)
    _rope_section(X, OUT, tok64, t_ok, p_t, INV, n_heads, stride_xt, stride_xh, stride_ot, stride_oh, sign,
                  0, D_T // 2, BLOCK_P, BLOCK_H, INTERLEAVED)
    _rope_section(X, OUT, tok64, t_ok, p_h, INV, n_heads, stride_xt, stride_xh, stride_ot, stride_oh, sign,
                  D_T, D_H // 2, BLOCK_P, BLOCK_H, INTERLEAVED)
    _rope_section(X, OUT, tok64, t_ok, p_w, INV, n_heads, stride_xt, stride_xh, stride_ot, stride_oh, sign,
                  D_T + D_H, D_W // 2, BLOCK_P, BLOCK_H, INTERLEAVED)
    if HAS_K:
        _rope_section(K, KOUT, tok64, t_ok, p_t, INV, n_kheads, stride_kt, stride_kh, stride_kot, stride_koh,
                      sign, 0, D_T // 2, BLOCK_P, BLOCK_H, INTERLEAVED)
        _rope_section(K, KOUT, tok64, t_ok, p_h, INV, n_kheads, stride_kt, stride_kh, stride_kot, stride_koh,
                      sign, D_T, D_H // 2, BLOCK_P, BLOCK_H, INTERLEAVED)
        _rope_section(K, KOUT, tok64, t_ok, p_w, INV, n_kheads, stride_kt, stride_kh, stride_kot, stride_koh,
                      sign, D_T + D_H, D_W // 2, BLOCK_P, BLOCK_H, INTERLEAVED)


@functools.lru_cache(maxsize=64)
def _inv_freq(sections: tuple[int, int, int], theta: float, device: torch.device) -> torch.Tensor:
    """[D/2] float32, section by section: the same formula (and float32 rounding) as sora.ops.rope."""
    return torch.cat([theta ** (-torch.arange(0, d, 2, device=device, dtype=torch.float32) / d)
                      for d in sections]).contiguous()


def _check(x, name, cu_seqlens, grid, sections):
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError(f"{name} must be a [tokens, heads, head_dim] tensor, got {getattr(x, 'shape', type(x))}")
    if x.stride(-1) != 1:
        raise ValueError(f"{name} must have a contiguous last dim (stride {x.stride(-1)})")
    sections = tuple(int(s) for s in sections)
    if len(sections) != 3 or sum(sections) != x.shape[2] or any(s % 2 or s < 0 for s in sections):
        raise ValueError(f"sections {sections} must be three even sizes summing to head_dim {x.shape[2]}")
    check_cu_seqlens("cu_seqlens", cu_seqlens, x.shape[0], x.device)
    if grid.shape != (cu_seqlens.numel() - 1, 3) or grid.dtype != torch.int32 or grid.device != x.device:
        raise ValueError(f"grid must be an int32 [B, 3] = [{cu_seqlens.numel() - 1}, 3] tensor on {x.device}, "
                         f"got {grid.dtype} {tuple(grid.shape)} on {grid.device}")
    if validate_values(grid) and not torch.equal((cu_seqlens[1:] - cu_seqlens[:-1]).long(), grid.long().prod(1)):
        raise ValueError("grid: each sample's T'*H'*W' must equal its cu_seqlens length")
    return sections


def rope_3d_qk(q, k, cu_seqlens, grid, sections, theta=10000.0, inverse=False, interleaved=False,
               inplace=False):
    """q [N, H, D] and k [N, Hk, D] (or k=None) rotated in one launch -> (q_out, k_out).

    inverse=True rotates by -angle (the backward). inplace=True writes into q and k.
    """
    sections = _check(q, "q", cu_seqlens, grid, sections)
    if k is not None:
        _check(k, "k", cu_seqlens, grid, sections)
        if k.dtype != q.dtype:
            raise ValueError(f"k dtype {k.dtype} differs from q dtype {q.dtype}")
    grid = grid.contiguous()
    qo = q if inplace else empty_like(q)
    ko = None if k is None else (k if inplace else empty_like(k))
    n = q.shape[0]
    if n == 0:
        return qo, ko
    kk, kko = (k, ko) if k is not None else (q, qo)                           # placeholders when no k
    launch(
        _rope_kernel, (triton.cdiv(n, BLOCK_T),),
        q, qo, kk, kko, cu_seqlens, grid, _inv_freq(sections, float(theta), q.device),
        n, cu_seqlens.numel() - 1, q.shape[1], kk.shape[1],
        q.stride(0), q.stride(1), qo.stride(0), qo.stride(1), kk.stride(0), kk.stride(1),
        kko.stride(0), kko.stride(1), -1.0 if inverse else 1.0,
        D_T=sections[0], D_H=sections[1], D_W=sections[2],
        BLOCK_P=max(2, triton.next_power_of_2(max(sections) // 2)),
        HAS_K=k is not None, INTERLEAVED=bool(interleaved), BLOCK_T=BLOCK_T, BLOCK_H=BLOCK_H, num_warps=NUM_WARPS)
    return qo, ko
