"""Fused patch embedding (patchify + linear) and its inverse (linear + unpatchify) in Triton.

Latents come packed as in sora.ops.patchify: every sample's [C, T, H, W] latent flattened and
concatenated; sample b starts at element cu_seqlens[b] * P (P = C*pt*ph*pw), its token grid is
grid[b]. Token n's patch element k lives at a latent address computed in registers from
(sample, t, h, w, c, dt, dh, dw), so the patch matrix is never materialised:
  embed:    tokens[N, D]  = gather(latents)[N, P] @ W[D, P]^T + b      (a gather-GEMM)
  unembed:  latents[N*P]  = scatter(x[N, D] @ W2[P, D]^T + b2)         (a GEMM-scatter)
Each is the other's input-gradient (with the weight transposed through strides). Weight grads
are one cuBLAS GEMM over the gathered patches (P is small: 16-64), bias grads a column sum.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._common import check_cu_seqlens, empty, launch, sample_of, tuned, validate_values


@triton.jit
def _patch_addr(CU, GRID, tok, kk, n_samples, C: tl.constexpr, PT: tl.constexpr, PH: tl.constexpr,
                PW: tl.constexpr):
    """[BM, BK] int64 latent offsets of patch elements kk [BK] of packed tokens tok [BM]."""
    s = sample_of(CU, tok, n_samples)
    start = tl.load(CU + s)
    gt = tl.load(GRID + s * 3)
    gh = tl.maximum(tl.load(GRID + s * 3 + 1), 1)
    gw = tl.maximum(tl.load(GRID + s * 3 + 2), 1)
    local = tok - start
    ti = local // (gh * gw)
    hi = (local // gw) % gh
    wi = local % gw
    hh, ww = gh * PH, gw * PW                                                  # latent H, W
    plane = (hh * ww).to(tl.int64)
    c = kk // (PT * PH * PW)
    r = kk % (PT * PH * PW)
    row = (ti * PT)[:, None] + (r // (PH * PW))[None, :]                       # latent t
    col_h = (hi * PH)[:, None] + ((r // PW) % PH)[None, :]
    col_w = (wi * PW)[:, None] + (r % PW)[None, :]
    base = start.to(tl.int64) * (C * PT * PH * PW)
    chan = (gt * PT).to(tl.int64)[:, None] * plane[:, None] * c[None, :]
    return base[:, None] + chan + row.to(tl.int64) * plane[:, None] + col_h * ww[:, None] + col_w


@triton.jit
def _embed_kernel(LAT, W, B, OUT, CU, GRID, n_tokens, n_samples, D, stride_wd, stride_wk, stride_o,
                  HAS_BIAS: tl.constexpr, C: tl.constexpr, PT: tl.constexpr, PH: tl.constexpr,
                  PW: tl.constexpr, DOT_PREC: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    P = C * PT * PH * PW  # constexpr
    tok = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    t_ok = tok < n_tokens
    d_ok = dn < D
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, P, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        k_ok = kk < P
        a = tl.load(LAT + _patch_addr(CU, GRID, tok, kk, n_samples, C, PT, PH, PW),
                    mask=t_ok[:, None] & k_ok[None, :], other=0.0)             # [BM, BK] gathered patches
        w = tl.load(W + dn[None, :] * stride_wd + kk[:, None] * stride_wk,
                    mask=k_ok[:, None] & d_ok[None, :], other=0.0)             # [BK, BN] = W^T tile
        acc = tl.dot(a, w, acc, input_precision=DOT_PREC)
    if HAS_BIAS:
        acc += tl.load(B + dn, mask=d_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(OUT + tok.to(tl.int64)[:, None] * stride_o + dn[None, :], acc.to(OUT.dtype.element_ty),
             mask=t_ok[:, None] & d_ok[None, :])


@triton.jit
def _unembed_kernel(X, W, B, LAT, CU, GRID, n_tokens, n_samples, D, stride_x, stride_wk, stride_wd,
                    HAS_BIAS: tl.constexpr, C: tl.constexpr, PT: tl.constexpr, PH: tl.constexpr,
                    PW: tl.constexpr, DOT_PREC: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    P = C * PT * PH * PW  # constexpr
    tok = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    kk = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    t_ok = tok < n_tokens
    k_ok = kk < P
    acc = tl.zeros([BLOCK_M, BLOCK_K], tl.float32)
    for d0 in range(0, D, BLOCK_N):
        dn = d0 + tl.arange(0, BLOCK_N)
        d_ok = dn < D
        x = tl.load(X + tok.to(tl.int64)[:, None] * stride_x + dn[None, :],
                    mask=t_ok[:, None] & d_ok[None, :], other=0.0)             # [BM, BN]
        w = tl.load(W + kk[None, :] * stride_wk + dn[:, None] * stride_wd,
                    mask=d_ok[:, None] & k_ok[None, :], other=0.0)             # [BN, BK] = W2^T tile
        acc = tl.dot(x, w, acc, input_precision=DOT_PREC)
    if HAS_BIAS:
        acc += tl.load(B + kk, mask=k_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(LAT + _patch_addr(CU, GRID, tok, kk, n_samples, C, PT, PH, PW), acc.to(LAT.dtype.element_ty),
             mask=t_ok[:, None] & k_ok[None, :])


@triton.jit
def _gather_kernel(LAT, OUT, CU, GRID, n_tokens, n_samples, C: tl.constexpr, PT: tl.constexpr,
                   PH: tl.constexpr, PW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """Plain packed patchify: OUT[N, P] = gather(LAT); also the adjoint of the scatter."""
    P = C * PT * PH * PW  # constexpr
    tok = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    kk = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    m = (tok < n_tokens)[:, None] & (kk < P)[None, :]
    v = tl.load(LAT + _patch_addr(CU, GRID, tok, kk, n_samples, C, PT, PH, PW), mask=m)
    tl.store(OUT + tok.to(tl.int64)[:, None] * P + kk[None, :], v, mask=m)


@triton.jit
def _scatter_kernel(TOK, LAT, CU, GRID, n_tokens, n_samples, C: tl.constexpr, PT: tl.constexpr,
                    PH: tl.constexpr, PW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """Plain packed unpatchify: LAT = scatter(TOK[N, P]) (a permutation: no two tokens collide)."""
    P = C * PT * PH * PW  # constexpr
    tok = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    kk = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    m = (tok < n_tokens)[:, None] & (kk < P)[None, :]
    v = tl.load(TOK + tok.to(tl.int64)[:, None] * P + kk[None, :], mask=m)
    tl.store(LAT + _patch_addr(CU, GRID, tok, kk, n_samples, C, PT, PH, PW), v, mask=m)


_GEMM_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
    for bm, bn, bk, w, s in [(128, 128, 64, 8, 3), (128, 64, 64, 4, 3), (64, 128, 32, 4, 3),
                             (128, 256, 64, 8, 3), (64, 64, 32, 4, 2)]
]
_INTERP = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16}
_embed = tuned(_embed_kernel, _GEMM_CONFIGS, ["D", "C", "PT", "PH", "PW", "DOT_PREC"], _INTERP)
_unembed = tuned(_unembed_kernel, _GEMM_CONFIGS, ["D", "C", "PT", "PH", "PW", "DOT_PREC"], _INTERP)
_COPY_BLOCKS = (16, 16)


def _prec(dtype):
    return "ieee" if dtype == torch.float32 else "tf32"


def _meta(cu_seqlens, grid, patch, channels):
    pt, ph, pw = (int(p) for p in patch)
    return dict(C=int(channels), PT=pt, PH=ph, PW=pw), cu_seqlens.numel() - 1


def embed(latents, cu_seqlens, grid, patch, channels, weight, bias=None):
    """latents [N*P] -> gather(latents) @ weight[D, P]^T (+ bias) [N, D]. weight may be any strided view."""
    meta, b = _meta(cu_seqlens, grid, patch, channels)
    n, d = latents.numel() // weight.shape[1], weight.shape[0]
    out = empty(n, d, device=latents.device, dtype=latents.dtype)             # [N, D]
    if n:
        _embed(lambda m: (triton.cdiv(n, m["BLOCK_M"]), triton.cdiv(d, m["BLOCK_N"])),
               latents, weight, bias if bias is not None else weight, out, cu_seqlens, grid, n, b, d,
               weight.stride(0), weight.stride(1), out.stride(0),
               HAS_BIAS=bias is not None, DOT_PREC=_prec(latents.dtype), **meta)
    return out


def unembed(x, cu_seqlens, grid, patch, channels, weight, bias=None):
    """x [N, D] -> scatter(x @ weight[P, D]^T (+ bias)) as latents [N*P]."""
    meta, b = _meta(cu_seqlens, grid, patch, channels)
    n, d, p = x.shape[0], x.shape[1], weight.shape[0]
    lat = empty(n * p, device=x.device, dtype=x.dtype)                       # [N*P]
    if n:
        _unembed(lambda m: (triton.cdiv(n, m["BLOCK_M"]), triton.cdiv(p, m["BLOCK_K"])),
                 x, weight, bias if bias is not None else weight, lat, cu_seqlens, grid, n, b, d,
                 x.stride(0), weight.stride(0), weight.stride(1),
                 HAS_BIAS=bias is not None, DOT_PREC=_prec(x.dtype), **meta)
    return lat


def patchify_packed(latents, cu_seqlens, grid, patch, channels):
    """latents [N*P] -> tokens [N, P] (the `kernel(x, cu_seqlens, grid, patch, channels)` of sora.ops)."""
    meta, b = _meta(cu_seqlens, grid, patch, channels)
    p = meta["C"] * meta["PT"] * meta["PH"] * meta["PW"]
    n = latents.numel() // p
    out = empty(n, p, device=latents.device, dtype=latents.dtype)
    if n:
        bm, bk = _COPY_BLOCKS
        launch(_gather_kernel, (triton.cdiv(n, bm), triton.cdiv(p, bk)), latents, out, cu_seqlens, grid, n, b,
               BLOCK_M=bm, BLOCK_K=bk, **meta)
    return out


def unpatchify_packed(tokens, cu_seqlens, grid, patch, channels):
    """tokens [N, P] -> latents [N*P]."""
    meta, b = _meta(cu_seqlens, grid, patch, channels)
    n, p = tokens.shape
    lat = empty(n * p, device=tokens.device, dtype=tokens.dtype)
    if n:
        bm, bk = _COPY_BLOCKS
        launch(_scatter_kernel, (triton.cdiv(n, bm), triton.cdiv(p, bk)), tokens, lat, cu_seqlens, grid, n, b,
               BLOCK_M=bm, BLOCK_K=bk, **meta)
    return lat


class PatchLinearFunction(torch.autograd.Function):
    """embed (inverse=False: latents -> tokens) or unembed (inverse=True: tokens -> latents)."""

    @staticmethod
    def forward(ctx, inp, weight, bias, cu_seqlens, grid, patch, channels, inverse):
        ctx.save_for_backward(inp, weight, cu_seqlens, grid)
        ctx.args = (patch, channels, inverse, bias is not None)
        fn = unembed if inverse else embed
        return fn(inp, cu_seqlens, grid, patch, channels, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        inp, weight, cu_seqlens, grid = ctx.saved_tensors
        patch, channels, inverse, has_bias = ctx.args
        grad = grad.contiguous()
        if inverse:   # lat = scatter(x @ W2^T + b2), W2 [P, D]
            g_tok = patchify_packed(grad, cu_seqlens, grid, patch, channels)              # [N, P]
            d_in = embed(grad, cu_seqlens, grid, patch, channels, weight.t())            # [N, D]
            d_w = g_tok.t().float() @ inp.float()                                        # [P, D]
            d_b = g_tok.float().sum(0) if has_bias else None
        else:         # y = gather(lat) @ W^T + b, W [D, P]
            d_in = unembed(grad, cu_seqlens, grid, patch, channels, weight.t())          # [N*P]
            d_w = grad.t().float() @ patchify_packed(inp, cu_seqlens, grid, patch, channels).float()  # [D, P]
            d_b = grad.float().sum(0) if has_bias else None
        d_w = d_w.to(weight.dtype)
        d_b = d_b.to(weight.dtype) if d_b is not None else None
        return d_in, d_w, d_b, None, None, None, None, None


def _check(name, t, cu_seqlens, grid, patch, channels, weight, bias, inverse):
    patch = tuple(int(p) for p in patch)
    if len(patch) != 3 or min(patch) < 1 or int(channels) < 1:
        raise ValueError(f"patch {patch} must be three sizes >= 1 and channels {channels} >= 1")
    p = int(channels) * patch[0] * patch[1] * patch[2]
    if grid.shape != (cu_seqlens.numel() - 1, 3) or grid.dtype != torch.int32 or grid.device != t.device:
        raise ValueError(f"grid must be an int32 [B, 3] tensor on {t.device}, got {grid.dtype} {tuple(grid.shape)}")
    n = t.shape[0] if inverse else t.numel() // p
    if inverse and (t.dim() != 2 or weight.dim() != 2 or weight.shape != (p, t.shape[1])):
        raise ValueError(f"{name} [N, D] and weight [P={p}, D] expected, got {tuple(t.shape)}, {tuple(weight.shape)}")
    if not inverse and (t.dim() != 1 or t.numel() % p or weight.dim() != 2 or weight.shape[1] != p):
        raise ValueError(f"{name} [N*P] with P={p} and weight [D, P] expected, got {tuple(t.shape)}, "
                         f"{tuple(weight.shape)}")
    if weight.dtype != t.dtype or (bias is not None and bias.dtype != t.dtype) or weight.device != t.device:
        raise ValueError(f"weight/bias must match {name}'s dtype {t.dtype} and device {t.device}, got {weight.dtype}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must be [{weight.shape[0]}], got {tuple(bias.shape)}")
    check_cu_seqlens("cu_seqlens", cu_seqlens, n, t.device)
    if validate_values(grid) and not torch.equal((cu_seqlens[1:] - cu_seqlens[:-1]).long(), grid.long().prod(1)):
        raise ValueError("grid: each sample's T'*H'*W' must equal its cu_seqlens length")
    return patch


def patch_embed(latents, cu_seqlens, grid, patch, channels, weight, bias=None):
    """Fused patchify + linear. latents [N*P] packed, weight [D, P], bias [D] -> tokens [N, D]."""
    patch = _check("latents", latents, cu_seqlens, grid, patch, channels, weight, bias, inverse=False)
    return PatchLinearFunction.apply(latents.contiguous(), weight, bias, cu_seqlens, grid.contiguous(),
                                     patch, int(channels), False)


def patch_unembed(x, cu_seqlens, grid, patch, channels, weight, bias=None):
    """Fused linear + unpatchify (the final layer). x [N, D], weight [P, D], bias [P] -> latents [N*P]."""
    patch = _check("x", x, cu_seqlens, grid, patch, channels, weight, bias, inverse=True)
    x = x if x.stride(1) == 1 else x.contiguous()
    return PatchLinearFunction.apply(x, weight, bias, cu_seqlens, grid.contiguous(), patch, int(channels), True)
