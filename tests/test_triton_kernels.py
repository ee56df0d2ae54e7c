"""Triton kernels (kernels/) against the plain-PyTorch references in sora/ops, forward and gradients.

The CPU cases run under Triton's CPU interpreter (tests/conftest.py sets TRITON_INTERPRET=1 before
anything imports kernels/; Triton reads it when a kernel is decorated); on a CUDA host, where this
process compiles the kernels, they run in a child pytest instead (tests/test_gpu_host.py). The GPU
cases (`pytest -m gpu`) run compiled. Shapes are small but odd: lengths 1, 17, 127/129, empty
samples, many short samples with one long one.
Errors are ||out - ref64|| / ||ref64|| against the reference in float64. fp32 must stay under
FP32_BOUND; bf16/fp16 under 2x the reference's own error in that dtype plus a small floor
(flash-attn's rule). Outputs are poisoned with NaN (kernels._common.POISON), so an element a
kernel does not write fails.
"""
from __future__ import annotations

import math
import threading

import pytest
import torch

triton = pytest.importorskip("triton")
pytestmark = pytest.mark.interpreter   # every case but the `gpu` ones launches kernels on CPU tensors

import kernels._common as kc  # noqa: E402
from kernels import flash_attn_varlen_func  # noqa: E402
from sora.ops.attention import varlen_attention_torch  # noqa: E402
from sora.ops.adaln import adaln_modulate_torch  # noqa: E402
from sora.ops.patchify import patchify_packed_torch, unpatchify_packed_torch  # noqa: E402
from sora.ops.rope import apply_rope_torch  # noqa: E402

FP32_BOUND = 1e-5
LOWP_FLOOR = {torch.bfloat16: 2e-3, torch.float16: 3e-4}


@pytest.fixture(autouse=True, scope="module")
def _interpreter_bf16():
    """Triton's interpreter (3.6) emulates bfloat16 badly: dot multiplies the operands' raw uint16
    bits, and float32 -> bfloat16 casts truncate (GPUs round to nearest even). Make both behave as
    on a GPU. Only the interpreter's emulation changes, not our kernels."""
    if not kc.INTERPRET:
        yield
        return
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter as ti

    builder = ti.InterpreterBuilder
    orig_dot, orig_cast = builder.create_dot, builder.cast_impl

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        if a.dtype.scalar == tl.bfloat16:
            a = ti.TensorHandle((a.data.astype(np.uint32) << 16).view(np.float32), tl.float32)
            b = ti.TensorHandle((b.data.astype(np.uint32) << 16).view(np.float32), tl.float32)
        return orig_dot(self, a, b, d, input_precision, max_num_imprecise_acc)

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            rne = torch.from_numpy(np.ascontiguousarray(src.data)).to(torch.bfloat16).view(torch.int16)
            return ti.TensorHandle(rne.numpy().view(np.uint16), tl.bfloat16)
        return orig_cast(self, src, dst_type)

    builder.create_dot, builder.cast_impl = create_dot, cast_impl
    yield
    builder.create_dot, builder.cast_impl = orig_dot, orig_cast


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    monkeypatch.setattr(kc, "POISON", float("nan"))


def _rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _check(name, out, ref_lowp, ref64, dtype):
    """out and ref_lowp computed in `dtype`, ref64 in float64 from the same inputs."""
    err = _rel(out, ref64)
    assert math.isfinite(err), f"{name}: non-finite output (an unwritten element?)"
    if dtype == torch.float32:
        assert err <= FP32_BOUND, f"{name}: rel err {err:.2e} > {FP32_BOUND:.0e}"
    else:
        bound = 2 * _rel(ref_lowp, ref64) + LOWP_FLOOR[dtype]
        assert err <= bound, f"{name}: rel err {err:.2e} > {bound:.2e} (2x reference's own + floor)"


def _cu(lens, device="cpu"):
    return torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32, device=device)


_GPU = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _on_devices(cpu_cases, gpu_cases):
    """The small cases on the CPU (interpreter), bigger ones on a GPU (`pytest -m gpu`)."""
    return ([pytest.param(*c, "cpu") for c in cpu_cases] +
            [pytest.param(*c, "cuda", marks=_GPU) for c in gpu_cases])


# --------------------------------------------------------------------------------- attention

ATTN_CASES = [  # q lengths, k lengths, H, Hkv, D, causal, dtype
    ([1, 17, 129], None, 2, 2, 64, False, torch.float32),
    ([17, 1, 40], [5, 23, 1], 4, 1, 40, False, torch.float32),           # cross-attention, GQA 4
    ([17, 5, 3, 0], [3, 20, 4, 2], 2, 1, 72, True, torch.float32),       # causal, Lq != Lk, empty q
    ([1, 2, 3, 5, 8, 127], None, 2, 2, 96, True, torch.float32),         # many short + one long
    ([33, 0, 9], [18, 7, 0], 3, 3, 32, False, torch.float32),            # samples with no keys
    ([129, 3], [40, 3], 2, 2, 128, True, torch.float32),
    ([17, 40], [23, 9], 4, 2, 64, False, torch.bfloat16),
    ([17, 40], None, 2, 1, 128, True, torch.float16),
]


GPU_ATTN_CASES = [
    ([1, 127, 129, 1000, 3, 2048], None, 8, 2, 128, False, torch.bfloat16),
    ([1, 127, 129, 1000, 3, 2048], None, 8, 8, 64, True, torch.float16),
    ([300, 17, 1500], [77, 120, 1], 6, 3, 72, False, torch.bfloat16),
    ([517, 64], [1000, 33], 4, 1, 96, True, torch.bfloat16),
    ([129, 1000], None, 2, 2, 40, False, torch.float32),
]


def _attn_inputs(lq, lk, h, hkv, d, dtype, device="cpu"):
    lk = lq if lk is None else lk
    q = torch.randn(sum(lq), h, d, dtype=dtype, device=device)
    k = torch.randn(sum(lk), hkv, d, dtype=dtype, device=device)
    v = torch.randn(sum(lk), hkv, d, dtype=dtype, device=device)
    return q, k, v, _cu(lq, device), _cu(lk, device), max(lq), max(lk)


@pytest.mark.parametrize("lq,lk,h,hkv,d,causal,dtype,device", _on_devices(ATTN_CASES, GPU_ATTN_CASES))
def test_flash_attn_matches_reference(lq, lk, h, hkv, d, causal, dtype, device):
    q, k, v, cq, ck, mq, mk = _attn_inputs(lq, lk, h, hkv, d, dtype, device)
    dout = torch.randn_like(q)
    scale = 0.7 / math.sqrt(d)
    outs = {}
    for name, dt, fn in (("triton", dtype, flash_attn_varlen_func), ("ref", dtype, varlen_attention_torch),
                         ("ref64", torch.float64, varlen_attention_torch)):
        xs = [t.detach().to(dt).requires_grad_() for t in (q, k, v)]
        o = fn(*xs, cq, ck, mq, mk, softmax_scale=scale, causal=causal)
        outs[name] = (o, *torch.autograd.grad(o, xs, dout.to(dt)))
    for i, what in enumerate(("out", "dq", "dk", "dv")):
        _check(what, outs["triton"][i], outs["ref"][i], outs["ref64"][i], dtype)


def test_flash_attn_lse_and_empty_rows():
    """softmax_lse [H, Nq] equals log-sum-exp of the scaled scores; +inf where a row sees no key."""
    lq, lk, h, hkv, d = [5, 17, 2], [2, 17, 0], 2, 1, 32
    q, k, v, cq, ck, mq, mk = _attn_inputs(lq, lk, h, hkv, d, torch.float32)
    out, lse, probs = flash_attn_varlen_func(q, k, v, cq, ck, mq, mk, causal=True, return_attn_probs=True)
    assert probs is None and lse.shape == (h, sum(lq)) and lse.dtype == torch.float32
    ref = torch.full((h, sum(lq)), float("inf"), dtype=torch.float64)
    kk = k.double().repeat_interleave(h // hkv, dim=1)
    for b in range(len(lq)):
        qs, ks = int(cq[b]), int(ck[b])
        for i in range(lq[b]):
            n = i + 1 + lk[b] - lq[b]                                        # keys visible (bottom-right)
            if n > 0:
                s = torch.einsum("hd,khd->hk", q[qs + i].double(), kk[ks:ks + n]) / math.sqrt(d)
                ref[:, qs + i] = torch.logsumexp(s, dim=1)
    fin = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(lse), fin)
    assert torch.allclose(lse.double()[fin], ref[fin], rtol=1e-6, atol=1e-5)
    assert torch.equal(out[:3], torch.zeros_like(out[:3]))                  # rows 0-2 of sample 0 see nothing
    assert torch.equal(out[-2:], torch.zeros_like(out[-2:]))                # sample 2 has no keys


def test_flash_attn_bad_input():
    q, k, v, cq, ck, mq, mk = _attn_inputs([3, 4], None, 4, 2, 32, torch.float32)
    with pytest.raises(ValueError, match="dropout_p"):
        flash_attn_varlen_func(q, k, v, cq, ck, mq, mk, dropout_p=0.1)
    with pytest.raises(ValueError, match="cu_seqlens_q"):
        flash_attn_varlen_func(q, k, v, cq.long(), ck, mq, mk)
    with pytest.raises(ValueError, match="cu_seqlens_k"):
        flash_attn_varlen_func(q, k, v, cq, _cu([3, 3]), mq, mk)
    with pytest.raises(ValueError, match="multiple"):
        flash_attn_varlen_func(q, k[:, :1].expand(-1, 3, -1), v[:, :1].expand(-1, 3, -1), cq, ck, mq, mk)
    with pytest.raises(ValueError, match="max_seqlen"):
        flash_attn_varlen_func(q, k, v, cq, ck, 3, mk)
    with pytest.raises(ValueError, match="float16"):
        flash_attn_varlen_func(q.double(), k.double(), v.double(), cq, ck, mq, mk)
    with pytest.raises(ValueError, match="multiple of 8"):
        flash_attn_varlen_func(q[..., :28], k[..., :28], v[..., :28], cq, ck, mq, mk)


def test_flash_attn_strided_qkv_views():
    """q, k, v as views of one fused qkv projection (the DiT's layout), gradients into that tensor."""
    lens, h, d = [9, 1, 30], 3, 40
    cu = _cu(lens)
    qkv = torch.randn(sum(lens), 3, h, d, requires_grad=True)
    g = torch.randn(sum(lens), h, d)
    res = []
    for fn, dt in ((flash_attn_varlen_func, torch.float32), (varlen_attention_torch, torch.float64)):
        x = qkv.detach().to(dt).requires_grad_()
        q, k, v = x.unbind(1)                                                 # strides (3*h*d, d, 1)
        o = fn(q, k, v, cu, cu, max(lens), max(lens))
        res.append((o, *torch.autograd.grad(o, x, g.to(dt))))
    for a, b in zip(*res):
        assert _rel(a, b) < FP32_BOUND


def test_dispatch_registers_triton_attention_and_auto_stays_on_reference_on_cpu():
    from sora.ops import attention as attn_op
    from sora.ops.backend import resolve_backend

    assert attn_op.IMPLEMENTATIONS["triton"] is not None
    assert resolve_backend("attention", attn_op.IMPLEMENTATIONS, "auto", None, "cpu") == "torch"
    assert resolve_backend("attention", attn_op.IMPLEMENTATIONS, "triton", None, "cpu") == "triton"
    q, k, v, cq, ck, mq, mk = _attn_inputs([5, 9], None, 2, 2, 32, torch.float32)
    out = attn_op.IMPLEMENTATIONS["triton"](q, k, v, cq, ck, mq, mk)
    assert _rel(out, varlen_attention_torch(q.double(), k.double(), v.double(), cq, ck)) < FP32_BOUND


# ---------------------------------------------------------------------------------------- rope

def _packing(grids, device="cpu"):
    grid = torch.tensor(grids, dtype=torch.int32).reshape(-1, 3)
    return _cu(grid.long().prod(1).tolist(), device), grid.to(device)


def _interleave_ref(x, cu, grid, sections, theta):
    """Interleaved pairing via the rotate-half reference: de-interleave each section, rotate, re-interleave."""
    perm, start = [], 0
    for d in sections:
        perm += list(range(start, start + d, 2)) + list(range(start + 1, start + d, 2))
        start += d
    perm = torch.tensor(perm, device=x.device)
    y = apply_rope_torch(x[..., perm], cu, grid, sections, theta)
    return torch.empty_like(y).index_copy_(-1, perm, y)


ROPE_CASES = [  # grids (T', H', W') per sample, heads, k heads, sections, theta, interleaved, dtype
    ([(1, 1, 1), (3, 2, 3), (1, 4, 5), (2, 5, 13)], 3, 1, (8, 12, 12), 10000.0, False, torch.float32),
    ([(2, 3, 3), (0, 4, 4), (1, 1, 7)], 2, 2, (16, 56, 56), 500.0, True, torch.float32),        # d=128, empty
    ([(5, 3, 2), (1, 1, 1)], 5, 5, (10, 14, 16), 10000.0, False, torch.bfloat16),                 # d=40
    ([(3, 3, 3)], 2, 1, (18, 28, 26), 10000.0, True, torch.float16),                              # d=72
]


GPU_ROPE_CASES = [
    ([(1, 1, 1), (9, 16, 30), (1, 45, 80), (5, 3, 2)], 16, 4, (16, 56, 56), 10000.0, False, torch.bfloat16),
    ([(13, 30, 40), (1, 2, 3)], 12, 12, (32, 48, 48), 10000.0, True, torch.bfloat16),
]


@pytest.mark.parametrize("grids,h,hk,sections,theta,interleaved,dtype,device",
                         _on_devices(ROPE_CASES, GPU_ROPE_CASES))
def test_rope_matches_reference(grids, h, hk, sections, theta, interleaved, dtype, device):
    from kernels.rope import rope_3d_qk
    cu, grid = _packing(grids, device)

    def rope_3d(x, *args, **kw):   # one tensor: k=None
        return rope_3d_qk(x, None, *args, **kw)[0]
    n, d = int(cu[-1]), sum(sections)
    q, k = torch.randn(n, h, d, dtype=dtype, device=device), torch.randn(n, hk, d, dtype=dtype, device=device)
    ref = _interleave_ref if interleaved else (lambda x, *a: apply_rope_torch(x, *a))
    qo, ko = rope_3d_qk(q, k, cu, grid, sections, theta, interleaved=interleaved)
    for got, x in ((qo, q), (ko, k)):
        _check("rope", got, ref(x, cu, grid, sections, theta), ref(x.double(), cu, grid, sections, theta), dtype)
    # the backward (inverse rotation) undoes the forward; alone it equals the reference's vjp
    back = rope_3d(qo, cu, grid, sections, theta, inverse=True, interleaved=interleaved)
    _check("rope inverse o rope", back, q, q.double(), torch.float32 if dtype == torch.float32 else dtype)
    g = torch.randn(n, h, d, dtype=torch.float64, device=device)
    x64 = q.double().requires_grad_()
    (vjp,) = torch.autograd.grad(ref(x64, cu, grid, sections, theta), x64, g)
    got = rope_3d(g.to(dtype), cu, grid, sections, theta, inverse=True, interleaved=interleaved)
    _check("rope vjp", got, vjp.to(dtype), vjp, dtype)
    # in place: writes into its inputs, same values
    q2, k2 = q.clone(), k.clone()
    rope_3d_qk(q2, k2, cu, grid, sections, theta, interleaved=interleaved, inplace=True)
    assert torch.equal(q2, qo) and torch.equal(k2, ko)


def test_rope_triton_backend_gradients_through_dispatch():
    from sora.ops import rope as rope_op
    cu, grid = _packing([(1, 1, 1), (2, 3, 5), (1, 2, 9)])
    sections = (8, 12, 12)
    q = torch.randn(int(cu[-1]), 3, 32, requires_grad=True)
    k = torch.randn(int(cu[-1]), 1, 32, requires_grad=True)
    gq, gk = torch.randn_like(q), torch.randn_like(k)
    fn = rope_op.IMPLEMENTATIONS["triton"]                      # the fused q+k kernel self-attention calls
    assert fn is not None
    qo, ko = fn(q, k, cu, grid, sections, 10000.0)
    dq, dk = torch.autograd.grad((qo, ko), (q, k), (gq, gk))
    for x, g, got in ((q, gq, dq), (k, gk, dk)):
        x64 = x.detach().double().requires_grad_()
        (ref,) = torch.autograd.grad(apply_rope_torch(x64, cu, grid, sections, 10000.0), x64, g.double())
        assert _rel(got, ref) < FP32_BOUND


def test_rope_bad_input():
    from kernels.rope import rope_3d_qk
    cu, grid = _packing([(1, 2, 3)])
    x = torch.randn(6, 2, 32)
    with pytest.raises(ValueError, match="sections"):
        rope_3d_qk(x, x, cu, grid, (8, 12, 10 + 1))
    with pytest.raises(ValueError, match="grid"):
        rope_3d_qk(x, x, cu, grid.long(), (8, 12, 12))
    with pytest.raises(ValueError, match="grid"):
        rope_3d_qk(x, None, cu, torch.tensor([[1, 2, 2]], dtype=torch.int32), (8, 12, 12))
    with pytest.raises(ValueError, match="dtype"):
        rope_3d_qk(x, x.double(), cu, grid, (8, 12, 12))


# --------------------------------------------------------------------------------------- adaLN

ADALN_CASES = [  # sample lengths, D, dtype
    ([1, 17, 0, 5, 129], 48, torch.float32),       # samples ending inside tiles, an empty one
    ([3, 1, 1, 2, 9], 72, torch.float32),          # several samples per tile
    ([17, 40], 96, torch.bfloat16),
    ([5, 1, 33], 64, torch.float16),
]


GPU_ADALN_CASES = [
    ([1, 17, 0, 4000, 129, 9000], 1152, torch.bfloat16),
    ([3] * 200 + [5000], 3072, torch.bfloat16),
    ([1000, 2000], 1536, torch.float32),
]


@pytest.mark.parametrize("lens,d,dtype,device", _on_devices(ADALN_CASES, GPU_ADALN_CASES))
def test_adaln_matches_reference(lens, d, dtype, device):
    from kernels.adaln import adaln_modulate
    cu = _cu(lens, device)
    x = torch.randn(sum(lens), d, dtype=dtype, device=device) * 2 + 0.5
    shift = torch.randn(len(lens), d, dtype=dtype, device=device)
    scale = torch.randn(len(lens), d, dtype=dtype, device=device) * 0.5
    dy = torch.randn_like(x)
    outs = {}
    for name, dt, fn in (("triton", dtype, adaln_modulate), ("ref", dtype, adaln_modulate_torch),
                         ("ref64", torch.float64, adaln_modulate_torch)):
        xs = [t.detach().to(dt).requires_grad_() for t in (x, shift, scale)]
        y = fn(*xs, cu, eps=1e-6)
        outs[name] = (y, *torch.autograd.grad(y, xs, dy.to(dt)))
    for i, what in enumerate(("y", "dx", "dshift", "dscale")):
        _check(what, outs["triton"][i], outs["ref"][i], outs["ref64"][i], dtype)


def test_adaln_dispatch_and_bad_input():
    from kernels.adaln import adaln_modulate
    from sora.ops import adaln as adaln_op
    cu = _cu([3, 4])
    x, sh, sc = torch.randn(7, 32), torch.randn(2, 32), torch.randn(2, 32)
    fn = adaln_op.IMPLEMENTATIONS["triton"]
    assert fn is not None
    assert _rel(fn(x, sh, sc, cu), adaln_modulate_torch(x.double(), sh.double(), sc.double(), cu)) < FP32_BOUND
    with pytest.raises(ValueError, match="shift"):
        adaln_modulate(x, sh[:1], sc, cu)
    with pytest.raises(ValueError, match="cu_seqlens"):
        adaln_modulate(x, sh, sc, _cu([3, 3]))


# --------------------------------------------------------------------------------- patch embed

PATCH_CASES = [  # token grids per sample, patch, channels, D, dtype
    ([(1, 1, 1), (3, 2, 5), (1, 4, 3), (2, 3, 7)], (1, 2, 2), 4, 40, torch.float32),   # P=16
    ([(2, 1, 3), (0, 2, 2), (1, 2, 1)], (2, 1, 3), 3, 24, torch.float32),             # P=18 (not pow2), empty
    ([(1, 3, 3), (2, 2, 5)], (1, 2, 2), 5, 64, torch.bfloat16),                        # P=20
    ([(3, 2, 2)], (1, 2, 2), 4, 32, torch.float16),
]


GPU_PATCH_CASES = [
    ([(1, 16, 16), (9, 30, 40), (5, 23, 17)], (1, 2, 2), 16, 1152, torch.bfloat16),
    ([(2, 8, 8), (4, 12, 20)], (2, 2, 2), 16, 1536, torch.bfloat16),
]


@pytest.mark.parametrize("grids,patch,channels,d,dtype,device", _on_devices(PATCH_CASES, GPU_PATCH_CASES))
def test_patch_embed_and_inverse_match_reference(grids, patch, channels, d, dtype, device):
    import torch.nn.functional as F

    from kernels.patch_embed import patch_embed, patch_unembed, patchify_packed, unpatchify_packed
    cu, grid = _packing(grids, device)
    p = channels * patch[0] * patch[1] * patch[2]
    n = int(cu[-1])
    kw = dict(dtype=dtype, device=device)
    lat, x = torch.randn(n * p, **kw), torch.randn(n, d, **kw)
    w, b = torch.randn(d, p, **kw) / p ** 0.5, torch.randn(d, **kw)
    w2, b2 = torch.randn(p, d, **kw) / d ** 0.5, torch.randn(p, **kw)
    g_tok, g_lat = torch.randn(n, d, **kw), torch.randn(n * p, **kw)

    def ref_embed(lat, w, b):
        return F.linear(patchify_packed_torch(lat, cu, grid, patch, channels), w, b)

    def ref_unembed(x, w2, b2):
        return unpatchify_packed_torch(F.linear(x, w2, b2), cu, grid, patch, channels)

    def tri_embed(lat, w, b):
        return patch_embed(lat, cu, grid, patch, channels, w, b)

    def tri_unembed(x, w2, b2):
        return patch_unembed(x, cu, grid, patch, channels, w2, b2)

    for what, (tri, ref, ins, g) in {"embed": (tri_embed, ref_embed, (lat, w, b), g_tok),
                                     "unembed": (tri_unembed, ref_unembed, (x, w2, b2), g_lat)}.items():
        outs = {}
        for name, dt, fn in (("triton", dtype, tri), ("ref", dtype, ref), ("ref64", torch.float64, ref)):
            xs = [t.detach().to(dt).requires_grad_() for t in ins]
            y = fn(*xs)
            outs[name] = (y, *torch.autograd.grad(y, xs, g.to(dt)))
        for i, part in enumerate(("out", "d_in", "d_weight", "d_bias")):
            _check(f"{what} {part}", outs["triton"][i], outs["ref"][i], outs["ref64"][i], dtype)
    # the plain copies: exact permutations, each other's inverse
    toks = patchify_packed(lat, cu, grid, patch, channels)
    assert torch.equal(toks, patchify_packed_torch(lat, cu, grid, patch, channels))
    assert torch.equal(unpatchify_packed(toks, cu, grid, patch, channels), lat)


def test_patch_embed_bad_input():
    from kernels.patch_embed import patch_embed, patch_unembed
    cu, grid = _packing([(1, 2, 2)])
    lat, w = torch.randn(4 * 16), torch.randn(8, 16)
    with pytest.raises(ValueError, match="weight"):
        patch_embed(lat, cu, grid, (1, 2, 2), 4, torch.randn(8, 12))
    with pytest.raises(ValueError, match="dtype"):
        patch_embed(lat, cu, grid, (1, 2, 2), 4, w.double())
    with pytest.raises(ValueError, match="grid"):
        patch_embed(lat, cu, grid.long(), (1, 2, 2), 4, w)
    with pytest.raises(ValueError, match="cu_seqlens"):
        patch_unembed(torch.randn(5, 8), cu, grid, (1, 2, 2), 4, w.t().contiguous())


def test_patch_ops_dispatch_to_triton():
    from sora.ops import patch_embed as pe_op
    from sora.ops import patchify as pf_op
    cu, grid = _packing([(1, 2, 2), (2, 1, 3)])
    lat = torch.randn(int(cu[-1]) * 16, requires_grad=True)
    toks = pf_op.PATCHIFY_IMPLEMENTATIONS["triton"](lat, cu, grid, (1, 2, 2), 4)
    assert torch.equal(toks, patchify_packed_torch(lat.detach(), cu, grid, (1, 2, 2), 4))
    g = torch.randn_like(toks)
    (dlat,) = torch.autograd.grad(toks, lat, g)                               # adjoint = unpatchify
    assert torch.equal(dlat, unpatchify_packed_torch(g, cu, grid, (1, 2, 2), 4))
    back = pf_op.UNPATCHIFY_IMPLEMENTATIONS["triton"](toks.detach(), cu, grid, (1, 2, 2), 4)
    assert torch.equal(back, lat.detach())
    w, b = torch.randn(8, 16), torch.randn(8)
    got = pe_op.IMPLEMENTATIONS["triton"](lat.detach(), cu, grid, (1, 2, 2), 4, w, b)
    ref = pe_op.IMPLEMENTATIONS["torch"](lat.detach().double(), cu, grid, (1, 2, 2), 4, w.double(), b.double())
    assert _rel(got, ref) < FP32_BOUND
    got = pe_op.INVERSE_IMPLEMENTATIONS["triton"](got, cu, grid, (1, 2, 2), 4, w.t().contiguous(), None)
    ref = pe_op.INVERSE_IMPLEMENTATIONS["torch"](ref, cu, grid, (1, 2, 2), 4, w.t().double(), None)
    assert _rel(got, ref) < FP32_BOUND


# ------------------------------------------------------------------------------ model-level

def test_tiny_dit_triton_backend_matches_torch_backend():
    """Every op of a tiny DiT on the Triton backend (the fused patch embedding and unpatchify, fused
    q+k RoPE, varlen attention, adaLN): outputs and all gradients match the torch backend."""
    from sora.models.dit import DiT
    torch.manual_seed(torch.randint(0, 2**31 - 1, ()).item())  # fresh, but both models share weights
    models = {name: DiT(channels=4, patch=(1, 2, 2), width=64, depth=1, heads=2, text_dim=24, backend=name)
              for name in ("torch", "triton")}
    names = dict(models["triton"].kernels.names)
    assert names.pop("packing_index") != "triton" and set(names.values()) == {"triton"}
    with torch.no_grad():  # random everywhere, zero-initialised gates and final layer included
        for p in models["torch"].parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    models["triton"].load_state_dict(models["torch"].state_dict())
    cu, grid = _packing([(1, 2, 3), (2, 3, 3), (1, 1, 1)])
    cu_ctx = _cu([3, 5, 2])
    n = int(cu[-1])
    x, t, ctx = torch.randn(n * 16), torch.rand(3), torch.randn(10, 24)   # packed latents [N*P], P = 4*1*2*2
    g = torch.randn(n * 16)
    given = torch.zeros(n, dtype=torch.bool)
    given[6:15] = True                          # the 2x3x3 clip's first frame, given clean
    res = {}
    for name, m in models.items():
        xi = x.clone().requires_grad_()
        out = m(xi, m.kernels.layout(cu, grid), t, ctx, cu_ctx, given=given)
        grads = torch.autograd.grad(out, [xi, *m.parameters()], g)
        res[name] = (out, grads)
    assert _rel(res["triton"][0], res["torch"][0]) < 1e-5
    names = ["x"] + [k for k, _ in models["torch"].named_parameters()]
    for name, a, b in zip(names, res["triton"][1], res["torch"][1]):
        assert _rel(a, b) < 1e-4, f"grad of {name}: {_rel(a, b):.2e}"


# ------------------------------------------------------------------------ launch-time allocator

def _in_fresh_thread(fn):
    """fn() on a new thread (a fresh context, as the autograd engine's device threads have)."""
    box = {}

    def run():
        try:
            box["out"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised on the caller's thread
            box["err"] = e
    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "err" in box:
        raise box["err"]
    return box.get("out")


def test_every_launch_finds_the_scratch_allocator_in_its_own_thread(monkeypatch):
    """Triton's scratch allocator lives in a ContextVar: per thread. On a GPU the autograd engine
    runs backward (and checkpoint recompute) on its own thread, where a forward-time
    set_allocator is invisible. Forward on one fresh thread, backward on another; every launch of
    every kernel (attention, RoPE, adaLN, patch embed, both directions) records the allocator a
    compiled launch would read at that moment (what triton/backends/nvidia/driver.py reads)."""
    from triton.runtime import _allocation
    from triton.runtime import interpreter

    def current():
        a = _allocation._allocator
        return a.get() if hasattr(a, "get") else a      # a ContextVar; Triton 3.4: the allocator itself

    seen = []
    run = interpreter.InterpretedFunction.run

    def recording_run(self, *args, **kwargs):
        seen.append((self.fn.__name__, threading.current_thread().name, current()))
        return run(self, *args, **kwargs)
    monkeypatch.setattr(interpreter.InterpretedFunction, "run", recording_run)

    from kernels import adaln_modulate, patch_embed, patch_unembed, rope_3d_qk
    from sora.ops.rope import RopeFunction
    cu, grid = _packing([(1, 2, 3), (2, 2, 2)])
    n = int(cu[-1])
    leaves = {"q": torch.randn(n, 2, 16), "x": torch.randn(n, 8), "shift": torch.randn(2, 8),
              "scale": torch.randn(2, 8), "lat": torch.randn(n * 4), "w": torch.randn(8, 4)}
    for t in leaves.values():
        t.requires_grad_()

    def forward():
        L = leaves
        att = flash_attn_varlen_func(L["q"], L["q"], L["q"], cu, cu, 8, 8, causal=True)
        rot = sum(RopeFunction.apply(L["q"], L["q"], cu, grid, (4, 6, 6), 100.0, rope_3d_qk))
        mod = adaln_modulate(L["x"], L["shift"], L["scale"], cu)
        tok = patch_embed(L["lat"], cu, grid, (1, 1, 1), 4, L["w"])
        lat = patch_unembed(tok, cu, grid, (1, 1, 1), 4, L["w"].t().contiguous())
        return att.sum() + rot.sum() + mod.sum() + lat.sum()

    loss = _in_fresh_thread(forward)
    _in_fresh_thread(lambda: loss.backward())
    assert all(t.grad is not None for t in leaves.values())
    kernels_run = {name for name, _, _ in seen}
    assert {"_fwd_kernel", "_bwd_preprocess", "_bwd_dkdv_kernel", "_bwd_dq_kernel", "_rope_kernel", "_adaln_fwd",
            "_adaln_bwd", "_embed_kernel", "_unembed_kernel"} <= kernels_run, kernels_run
    assert len({thread for _, thread, _ in seen}) == 2
    missing = sorted({(name, thread) for name, thread, alloc in seen if isinstance(alloc, _allocation.NullAllocator)})
    assert not missing, f"launches that would find no allocator: {missing}"
