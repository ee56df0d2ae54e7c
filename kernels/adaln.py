"""Fused adaLN-modulated LayerNorm on packed tokens in Triton, forward and backward.

y = LayerNorm(x) * (1 + scale[s]) + shift[s]   (no affine; s = the token's sample, found in
registers by binary search over cu_seqlens). Statistics in float32, one rounding at the end.
Forward saves only the per-row mean and 1/std ([N] float32 each).
Backward: dx per row; dscale[s] = sum dy * xhat and dshift[s] = sum dy over the rows of sample s.
Each program walks a contiguous chunk of rows (samples are contiguous), keeps the running sums of
the current sample in registers and flushes them with one atomic add per (program, sample).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._common import INTERPRET, check_cu_seqlens, empty, empty_like, launch, sample_of


@triton.jit
def _adaln_fwd(X, SHIFT, SCALE, Y, MEAN, RSTD, CU, n_rows, n_samples, D, stride_x, stride_sh, stride_sc,
               stride_y, eps, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)                 # [BR]
    cols = tl.arange(0, BLOCK_D)
    r_ok = rows < n_rows
    m = r_ok[:, None] & (cols[None, :] < D)
    r64 = rows.to(tl.int64)[:, None]
    x = tl.load(X + r64 * stride_x + cols[None, :], mask=m, other=0.0).to(tl.float32)   # [BR, BD]
    mean = tl.sum(x, 1) / D
    xc = tl.where(m, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, 1) / D + eps)
    s = sample_of(CU, rows, n_samples)[:, None]
    sc = tl.load(SCALE + s * stride_sc + cols[None, :], mask=m, other=0.0).to(tl.float32)
    sh = tl.load(SHIFT + s * stride_sh + cols[None, :], mask=m, other=0.0).to(tl.float32)
    y = xc * rstd[:, None] * (1.0 + sc) + sh
    tl.store(Y + r64 * stride_y + cols[None, :], y.to(Y.dtype.element_ty), mask=m)
    tl.store(MEAN + rows, mean, mask=r_ok)
    tl.store(RSTD + rows, rstd, mask=r_ok)


@triton.jit
def _adaln_bwd(X, SCALE, DY, DX, MEAN, RSTD, DSHIFT, DSCALE, CU, n_rows, n_samples, D, rows_per_prog,
               stride_x, stride_sc, stride_dy, stride_dx, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    r0 = tl.program_id(0) * rows_per_prog
    r1 = tl.minimum(r0 + rows_per_prog, n_rows)
    cols = tl.arange(0, BLOCK_D)
    c_ok = cols < D
    acc_sc = tl.zeros([BLOCK_D], tl.float32)      # running sums of sample `cur`
    acc_sh = tl.zeros([BLOCK_D], tl.float32)
    cur = sample_of(CU, r0, n_samples)
    for t in range(r0, r1, BLOCK_R):
        rows = t + tl.arange(0, BLOCK_R)
        r_ok = rows < r1
        m = r_ok[:, None] & c_ok[None, :]
        r64 = rows.to(tl.int64)[:, None]
        x = tl.load(X + r64 * stride_x + cols[None, :], mask=m, other=0.0).to(tl.float32)    # [BR, BD]
        dy = tl.load(DY + r64 * stride_dy + cols[None, :], mask=m, other=0.0).to(tl.float32)
        mean = tl.load(MEAN + rows, mask=r_ok, other=0.0)
        rstd = tl.load(RSTD + rows, mask=r_ok, other=0.0)
        s = sample_of(CU, rows, n_samples)
        sc = tl.load(SCALE + s[:, None] * stride_sc + cols[None, :], mask=m, other=0.0).to(tl.float32)
        xhat = tl.where(m, (x - mean[:, None]) * rstd[:, None], 0.0)
        wdy = dy * (1.0 + sc)
        dx = rstd[:, None] * (wdy - (tl.sum(wdy, 1) / D)[:, None] - xhat * (tl.sum(wdy * xhat, 1) / D)[:, None])
        tl.store(DX + r64 * stride_dx + cols[None, :], dx.to(DX.dtype.element_ty), mask=m)
        g_sc = dy * xhat                                                       # [BR, BD], 0 off the rows
        s = tl.where(r_ok, s, cur)
        s_lo = tl.min(s, 0)
        s_hi = tl.max(s, 0)
        if s_lo != cur:                             # a new sample starts with this tile
            tl.atomic_add(DSCALE + cur * D + cols, acc_sc, mask=c_ok)
            tl.atomic_add(DSHIFT + cur * D + cols, acc_sh, mask=c_ok)
            acc_sc = tl.zeros([BLOCK_D], tl.float32)
            acc_sh = tl.zeros([BLOCK_D], tl.float32)
            cur = s_lo
        if s_lo == s_hi:                            # the usual case: the tile lies in one sample
            acc_sc += tl.sum(g_sc, 0)
            acc_sh += tl.sum(dy, 0)
        else:                                       # samples end inside the tile
            for ss in range(s_lo, s_hi):
                sel = (s == ss)[:, None]
                part_sc = tl.sum(tl.where(sel, g_sc, 0.0), 0)
                part_sh = tl.sum(tl.where(sel, dy, 0.0), 0)
                if ss == s_lo:
                    part_sc += acc_sc
                    part_sh += acc_sh
                tl.atomic_add(DSCALE + ss * D + cols, part_sc, mask=c_ok)
                tl.atomic_add(DSHIFT + ss * D + cols, part_sh, mask=c_ok)
            sel = (s == s_hi)[:, None]
            acc_sc = tl.sum(tl.where(sel, g_sc, 0.0), 0)
            acc_sh = tl.sum(tl.where(sel, dy, 0.0), 0)
            cur = s_hi
    if r0 < r1:
        tl.atomic_add(DSCALE + cur * D + cols, acc_sc, mask=c_ok)
        tl.atomic_add(DSHIFT + cur * D + cols, acc_sh, mask=c_ok)


def _blocks(d):
    block_d = triton.next_power_of_2(d)
    block_r = 4 if INTERPRET else max(1, min(32, 8192 // block_d))
    return block_r, block_d, max(4, min(16, block_r * block_d // 1024))


def _programs(device, n_tiles):
    if INTERPRET or device.type != "cuda":
        return min(n_tiles, 3)
    return min(n_tiles, 4 * torch.cuda.get_device_properties(device).multi_processor_count)


class AdaLNFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, shift, scale, cu_seqlens, eps):
        n, d = x.shape
        b = cu_seqlens.numel() - 1
        y = empty_like(x)                                                     # [N, D]
        mean = empty(n, device=x.device, dtype=torch.float32)                 # [N]
        rstd = empty(n, device=x.device, dtype=torch.float32)
        block_r, block_d, warps = _blocks(d)
        if n:
            launch(_adaln_fwd, (triton.cdiv(n, block_r),),
                   x, shift, scale, y, mean, rstd, cu_seqlens, n, b, d, x.stride(0), shift.stride(0),
                   scale.stride(0), y.stride(0), float(eps), BLOCK_R=block_r, BLOCK_D=block_d, num_warps=warps)
        ctx.save_for_backward(x, scale, mean, rstd, cu_seqlens)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, scale, mean, rstd, cu_seqlens = ctx.saved_tensors
        n, d = x.shape
        b = cu_seqlens.numel() - 1
        dy = dy.contiguous()
        dx = empty_like(x)
        dshift = torch.zeros(b, d, device=x.device, dtype=torch.float32)     # atomics accumulate here
        dscale = torch.zeros(b, d, device=x.device, dtype=torch.float32)
        block_r, block_d, warps = _blocks(d)
        if n:
            n_tiles = triton.cdiv(n, block_r)
            progs = _programs(x.device, n_tiles)
            rows_per_prog = triton.cdiv(n_tiles, progs) * block_r
            launch(_adaln_bwd, (triton.cdiv(n, rows_per_prog),),
                   x, scale, dy, dx, mean, rstd, dshift, dscale, cu_seqlens, n, b, d, rows_per_prog,
                   x.stride(0), scale.stride(0), dy.stride(0), dx.stride(0),
                   BLOCK_R=block_r, BLOCK_D=block_d, num_warps=warps)
        return dx, dshift.to(scale.dtype), dscale.to(scale.dtype), None, None


def adaln_modulate(x, shift, scale, cu_seqlens, eps=1e-6):
    """x [N, D], shift/scale [B, D] -> LayerNorm(x) * (1 + scale[s]) + shift[s], [N, D]."""
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError(f"x must be a [tokens, dim] tensor, got {getattr(x, 'shape', type(x))}")
    b = cu_seqlens.numel() - 1 if isinstance(cu_seqlens, torch.Tensor) else -1
    for name, t in (("shift", shift), ("scale", scale)):
        if not isinstance(t, torch.Tensor) or t.shape != (b, x.shape[1]) or t.device != x.device:
            raise ValueError(f"{name} must be [B, D] = [{b}, {x.shape[1]}] on {x.device}, "
                             f"got {getattr(t, 'shape', type(t))}")
    if x.shape[1] > 65536:
        raise ValueError(f"x dim {x.shape[1]} > 65536 is not supported (one row per tile)")
    check_cu_seqlens("cu_seqlens", cu_seqlens, x.shape[0], x.device)
    x = x if x.stride(1) == 1 else x.contiguous()
    shift = shift if shift.stride(1) == 1 else shift.contiguous()
    scale = scale if scale.stride(1) == 1 else scale.contiguous()
    return AdaLNFunction.apply(x, shift, scale, cu_seqlens, eps)
