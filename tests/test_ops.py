"""Reference ops against independent plain formulations, forward and gradients, in float64."""
import math

import pytest
import torch

from sora.ops import select_kernels
from sora.ops.adaln import adaln_modulate_torch
from sora.ops.attention import varlen_attention_torch
from sora.ops.backend import BackendUnavailable
from sora.ops.packing_index import check_packing, token_positions
from sora.ops.patchify import patchify, unpatchify
from sora.ops.rope import apply_rope_torch, rope_sections

ODD_LENS = [[1], [17], [127, 129], [1, 17, 3, 129], [5, 5, 5, 5, 5, 5, 70]]


def cu_of(lens):
    return torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32)


def dense_attention(q, k, v, cu_q, cu_k, causal=False):
    """Whole-pack attention with a block-diagonal mask (an independent formulation)."""
    sq = torch.repeat_interleave(torch.arange(len(cu_q) - 1), (cu_q[1:] - cu_q[:-1]).long())
    sk = torch.repeat_interleave(torch.arange(len(cu_k) - 1), (cu_k[1:] - cu_k[:-1]).long())
    mask = sq[:, None] == sk[None, :]
    if causal:
        iq = torch.arange(q.shape[0]) - cu_q.long()[sq]
        ik = torch.arange(k.shape[0]) - cu_k.long()[sk]
        lq = (cu_q[1:] - cu_q[:-1]).long()[sq]
        lk = (cu_k[1:] - cu_k[:-1]).long()[sk]
        mask &= ik[None, :] <= (iq + lk - lq)[:, None]
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    s = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(q.shape[-1])
    s = s.masked_fill(~mask, float("-inf"))
    return torch.einsum("hqk,khd->qhd", s.softmax(-1), v)


@pytest.mark.parametrize("lens", ODD_LENS)
@pytest.mark.parametrize("causal", [False, True])
def test_varlen_attention_matches_dense(lens, causal):
    torch.manual_seed(len(lens) * 7 + causal)
    ctx_lens = [max(1, n // 3 + 2) for n in lens] if not causal else lens
    cu_q, cu_k = cu_of(lens), cu_of(ctx_lens)
    h, hkv, d = 4, 2, 24
    q = torch.randn(sum(lens), h, d, dtype=torch.float64, requires_grad=True)
    k = torch.randn(sum(ctx_lens), hkv, d, dtype=torch.float64, requires_grad=True)
    v = torch.randn(sum(ctx_lens), hkv, d, dtype=torch.float64, requires_grad=True)
    out = varlen_attention_torch(q, k, v, cu_q, cu_k, max(lens), max(ctx_lens), causal=causal)
    ref = dense_attention(q, k, v, cu_q, cu_k, causal)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    go = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), go)
    grads_ref = torch.autograd.grad(ref, (q, k, v), go)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_attention_rejects_bad_input():
    q = torch.randn(10, 2, 8)
    with pytest.raises(ValueError, match="cu_seqlens end"):
        varlen_attention_torch(q, q, q, cu_of([4, 5]), cu_of([4, 5]))
    with pytest.raises(ValueError, match="heads"):
        varlen_attention_torch(torch.randn(10, 3, 8), q, q, cu_of([10]), cu_of([10]))


def random_grids(n, seed):
    g = torch.Generator().manual_seed(seed)
    grids = torch.randint(1, 5, (n, 3), generator=g)
    grids[0] = torch.tensor([1, 3, 5])  # an image
    return grids.int()


def test_token_positions_enumerate_each_grid():
    grids = random_grids(5, 0)
    cu = cu_of(grids.prod(1).tolist())
    check_packing(cu, grids, int(cu[-1]))
    pos = token_positions(cu, grids)
    for b, (t, h, w) in enumerate(grids.tolist()):
        expect = torch.stack(torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij"), -1).reshape(-1, 3)
        assert torch.equal(pos[cu[b]:cu[b + 1]], expect)
    with pytest.raises(ValueError, match="do not match grid"):
        check_packing(cu_of([1, 2, 3, 4, 5]), grids)


def rope_reference(x, grids, sections, theta):
    """Per-sample, per-token complex rotation (independent of the packed implementation)."""
    out = torch.empty_like(x)
    n = 0
    for t, h, w in grids.tolist():
        for pt in range(t):
            for ph in range(h):
                for pw in range(w):
                    start = 0
                    for pos, dim in zip((pt, ph, pw), sections):
                        half = dim // 2
                        freqs = theta ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
                        rot = torch.polar(torch.ones(half, dtype=torch.float64), pos * freqs)
                        seg = x[n, :, start:start + dim]
                        z = torch.complex(seg[:, :half], seg[:, half:]) * rot
                        out[n, :, start:start + half], out[n, :, start + half:start + dim] = z.real, z.imag
                        start += dim
                    n += 1
    return out


@pytest.mark.parametrize("head_dim", [8, 24, 40])
def test_rope_matches_per_token_reference(head_dim):
    grids = random_grids(4, head_dim)
    cu = cu_of(grids.prod(1).tolist())
    sections = rope_sections(head_dim)
    x = torch.randn(int(cu[-1]), 3, head_dim, dtype=torch.float64, requires_grad=True)
    out = apply_rope_torch(x, cu, grids, sections, 100.0)
    torch.testing.assert_close(out, rope_reference(x.detach(), grids, sections, 100.0), rtol=1e-6, atol=1e-6)
    # A rotation: the gradient is the inverse rotation of the upstream gradient (norm preserved).
    go = torch.randn_like(out)
    (gx,) = torch.autograd.grad(out, x, go)
    torch.testing.assert_close(gx.norm(dim=-1), go.norm(dim=-1))


def test_rope_is_relative():
    """q.k after RoPE depends only on the position difference, within and across samples."""
    d, sections = 24, rope_sections(24)
    grids = torch.tensor([[3, 4, 5], [3, 4, 5]], dtype=torch.int32)
    cu = cu_of([60, 60])
    q = torch.randn(1, 1, d, dtype=torch.float64).expand(120, 1, d)
    k = torch.randn(1, 1, d, dtype=torch.float64).expand(120, 1, d)
    rq, rk = apply_rope_torch(q, cu, grids, sections), apply_rope_torch(k, cu, grids, sections)
    idx = lambda t, h, w: t * 20 + h * 5 + w  # noqa: E731
    a = (rq[idx(1, 1, 1)] * rk[idx(0, 0, 0)]).sum()
    b = (rq[60 + idx(2, 3, 4)] * rk[60 + idx(1, 2, 3)]).sum()
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("patch", [(1, 2, 2), (2, 1, 3)])
def test_patchify_roundtrip_and_layout(patch):
    latent = torch.randn(3, 4, 6, 6, dtype=torch.float64)
    tokens = patchify(latent, patch)
    grid = (4 // patch[0], 6 // patch[1], 6 // patch[2])
    assert tokens.shape == (grid[0] * grid[1] * grid[2], 3 * patch[0] * patch[1] * patch[2])
    torch.testing.assert_close(unpatchify(tokens, grid, patch, 3), latent)
    # token (t, h, w) holds exactly the latent block at that grid position
    t, h, w = grid[0] - 1, grid[1] - 1, 1
    n = (t * grid[1] + h) * grid[2] + w
    block = latent[:, t * patch[0]:(t + 1) * patch[0], h * patch[1]:(h + 1) * patch[1], w * patch[2]:(w + 1) * patch[2]]
    torch.testing.assert_close(tokens[n], block.reshape(-1))
    with pytest.raises(ValueError, match="not divisible"):
        patchify(torch.randn(3, 4, 5, 9), (1, 2, 2))


@pytest.mark.parametrize("lens", ODD_LENS)
def test_adaln_matches_per_sample(lens):
    cu = cu_of(lens)
    b, d = len(lens), 12
    x = torch.randn(sum(lens), d, dtype=torch.float64, requires_grad=True)
    shift = torch.randn(b, d, dtype=torch.float64, requires_grad=True)
    scale = torch.randn(b, d, dtype=torch.float64, requires_grad=True)
    out = adaln_modulate_torch(x, shift, scale, cu)
    parts = []
    for i in range(b):
        xs = x[cu[i]:cu[i + 1]]
        mu, var = xs.mean(-1, keepdim=True), xs.var(-1, unbiased=False, keepdim=True)
        parts.append((xs - mu) / torch.sqrt(var + 1e-6) * (1 + scale[i]) + shift[i])
    ref = torch.cat(parts)
    torch.testing.assert_close(out, ref)
    go = torch.randn_like(out)
    for a, r in zip(torch.autograd.grad(out, (x, shift, scale), go), torch.autograd.grad(ref, (x, shift, scale), go)):
        torch.testing.assert_close(a, r)


def test_backend_resolution(monkeypatch):
    from sora.ops import _ext
    # auto on CPU: the compiled C++ RoPE when sora._C is built (tests/test_csrc.py), else the reference
    compiled = "cpp" if _ext.AVAILABLE else "torch"
    assert select_kernels().names == {"attention": "torch", "adaln": "torch", **{
        op: compiled for op in ("rope", "patch_embed", "patch_unembed", "patchify", "unpatchify", "packing_index")}}
    monkeypatch.setenv("SORA_KERNEL_BACKEND", "torch")
    assert select_kernels(configured="auto").names["rope"] == "torch"
    # triton registers wherever Triton imports (tests/test_triton_kernels.py runs it); flash-attn is optional
    try:
        import triton  # noqa: F401
        names = select_kernels(backend="triton").names    # the packing index has no Triton kernel: auto serves it
        assert names.pop("packing_index") == compiled and set(names.values()) == {"triton"}
    except ImportError:
        with pytest.raises(BackendUnavailable, match="triton"):
            select_kernels(backend="triton")
    from sora.ops import attention
    if attention.IMPLEMENTATIONS["flash_attn"] is None:
        with pytest.raises(BackendUnavailable, match="flash_attn"):
            select_kernels(backend="flash_attn")
    with pytest.raises(BackendUnavailable, match="unknown"):
        select_kernels(backend="magic")
