"""The analytic cost model (sora/train/flops.py) against measurements of the real model.

FLOPs: exactly equal to torch's FlopCounterMode over forward + backward of the real DiT and of
TextToVideo (trainable hash text encoder), with and without activation checkpointing.
Memory: activation bytes against the bytes autograd really saves for backward (unique storages
seen by a saved-tensors hook, parameters excluded), within 20% at three lengths, fp32 and bf16;
peak bytes of a whole step (params, grads, Adam, activations, temporaries) against
torch's MemTracker on CPU, within 20%.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from sora.config import load_config
from sora.models.dit import DiT
from sora.models.t2v import TextToVideo
from sora.train import flops as F

W, DEPTH, HEADS, IN, TEXT = 64, 2, 4, 16, 32


def _dit(**kw):
    """The DiT of these tests: 4 latent channels x (1, 2, 2) patches = IN values per token."""
    return DiT(IN // 4, (1, 2, 2), W, DEPTH, HEADS, TEXT, **kw)


def _packed(model, seqlens, ctx_lens, text_dim=TEXT, dtype=torch.float32, gen=None):
    """(latents [N*P], layout, t, ctx, cu_ctx): the DiT's arguments for samples of these lengths."""
    kernels = getattr(model, "dit", model).kernels
    cu = torch.tensor([0] + list(torch.tensor(seqlens).cumsum(0)), dtype=torch.int32)
    grid = torch.tensor([[1, 1, s] for s in seqlens], dtype=torch.int32)
    cu_c = torch.tensor([0] + list(torch.tensor(ctx_lens).cumsum(0)), dtype=torch.int32)
    x = torch.randn(sum(seqlens) * IN, generator=gen, dtype=dtype)
    ctx = torch.randn(sum(ctx_lens), text_dim, generator=gen, dtype=dtype)
    t = torch.rand(len(seqlens), generator=gen).to(dtype)
    return x, kernels.layout(cu, grid), t, ctx, cu_c


def _shape(**kw):
    return F.DiTShape(DEPTH, W, HEADS, IN, TEXT, **kw)


def test_param_count_matches_model():
    for qk in (True, False):
        m = _dit(qk_norm=qk)
        assert F.DiTShape(DEPTH, W, HEADS, IN, TEXT, qk_norm=qk).dit_params() == sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("checkpointing", [False, True])
def test_dit_flops_exact(checkpointing):
    torch.manual_seed(0)
    m = _dit(checkpointing=checkpointing).train()
    seqlens, ctx_lens = [1, 17, 40, 6], [3, 1, 5, 2]           # odd sizes, an image-like 1-token sample
    args = _packed(m, seqlens, ctx_lens)
    with F.flop_counter() as fc:
        m(*args).square().mean().backward()
    path = F.attention_path(m.kernels.attention)
    est = F.step_flops(_shape(), seqlens, ctx_lens, checkpointing=checkpointing, attention=path,
                       ctx_requires_grad=False)
    assert est.executed == fc.get_total_flops()
    if not checkpointing:
        assert est.recompute == 0
    else:
        assert est.recompute > 0 and est.model == est.executed - est.recompute - est.attention_recompute


@pytest.mark.parametrize("qk_norm", [True, False])
def test_wan_arch_params_and_flops_exact(qk_norm):
    """The Wan switches (explicit FFN width, text MLP, across-heads q/k norm, no pooled text / frame /
    given embedding, other output channels, no cross norm) in the count and the FLOPs."""
    from sora.models.dit import DiTArch

    torch.manual_seed(0)
    arch = DiTArch(out_channels=6, ffn_dim=72, qk_norm_across_heads=True, rope_sections=(6, 4, 6), text_mlp=True,
                   pooled_text=False, frame_embed=False, final_silu=False, cross_norm=qk_norm, t_freq_dim=32,
                   given="clean_time")
    m = _dit(qk_norm=qk_norm, arch=arch).train()
    shape = F.DiTShape(DEPTH, W, HEADS, IN, TEXT, qk_norm=qk_norm, arch=arch, out_dim=6 * 4)
    assert shape.dit_params() == sum(p.numel() for p in m.parameters())
    seqlens, ctx_lens = [1, 17, 40, 6], [3, 1, 5, 2]
    with F.flop_counter() as fc:
        m(*_packed(m, seqlens, ctx_lens)).square().mean().backward()
    est = F.step_flops(shape, seqlens, ctx_lens, attention=F.attention_path(m.kernels.attention),
                       ctx_requires_grad=False)
    assert est.executed == fc.get_total_flops()


def test_t2v_flops_exact_with_trainable_text_encoder():
    torch.manual_seed(0)
    cfg = load_config(None, ["model.depth=2", "model.width=64", "model.heads=4", "text.dim=32", "text.heads=4",
                             "text.layers=1"])
    model = TextToVideo(cfg).train()
    # punctuation, the empty caption, one longer than text.max_tokens: not the caption's word count
    captions = ["a red circle, moving left!", "", " ".join(["a big white triangle moving up and then down"] * 4)]
    ctx_lens = model.text_lengths(captions)
    assert ctx_lens == model.encode_text(captions, "cpu")[1].diff().tolist() == [6, 1, cfg.text.max_tokens]
    seqlens = [12, 30, 5]
    x, layout, t, _, _ = _packed(model, seqlens, ctx_lens)
    cu = layout.cu_seqlens
    with F.flop_counter() as fc:
        model(x, layout, t, captions).square().mean().backward()
    shape = F.DiTShape.from_config(cfg)
    assert shape.text_layers == 1 and shape.dit_params() == sum(p.numel() for p in model.dit.parameters())
    est = F.step_flops(shape, seqlens, ctx_lens, attention=F.attention_path(model.dit.kernels.attention))
    assert est.executed == fc.get_total_flops()
    # the trainer's MFU numerator on this pack: the same count, without flash-style recompute
    from sora.train.trainer import model_flops
    assert model_flops(shape, model, SimpleNamespace(cu_seqlens=cu, captions=captions)) == est.model


def test_flops_attention_grows_with_sample_length_not_pack_length():
    s = _shape()
    one = F.step_flops(s, [64], [4])
    four = F.step_flops(s, [16] * 4, [1] * 4)
    # same tokens, but one long sample has 4x the self-attention score FLOPs of four short ones
    assert one.attention_forward > four.attention_forward
    assert F.step_flops(s, [64], [4], attention="flash").model == one.model   # MFU ignores recompute


def _saved_bytes(model, args) -> int:
    """Bytes of unique storages autograd saves during one forward (parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            seen.setdefault(st.data_ptr(), st.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(*args)
    del out
    return sum(seen.values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_activation_memory_within_20_percent(dtype):
    torch.manual_seed(0)
    m = _dit().to(dtype).train()
    path = F.attention_path(m.kernels.attention)
    for seqlens in ([48], [96, 32], [256]):                         # three lengths
        ctx_lens = [5] * len(seqlens)
        try:
            measured = _saved_bytes(m, _packed(m, seqlens, ctx_lens, dtype=dtype))
        except RuntimeError as e:   # a model-side dtype bug must not hide as a memory-model failure
            if dtype is torch.bfloat16 and "same dtype" in str(e):
                pytest.skip(f"the DiT does not run in pure bf16 yet: {e}")
            raise
        est = F.activation_bytes(_shape(), seqlens, ctx_lens, act_bytes=F.BYTES[dtype], attention=path)
        assert abs(est - measured) / measured < 0.20, (seqlens, dtype, est, measured)


def test_peak_memory_of_a_step_within_20_percent():
    from torch.distributed._tools.mem_tracker import MemTracker

    torch.manual_seed(0)
    for checkpointing in (False, True):
        m = _dit(checkpointing=checkpointing).train()
        opt = torch.optim.AdamW(m.parameters())
        path = F.attention_path(m.kernels.attention)
        shape = _shape()
        for seqlens in ([64], [128, 32], [512]):
            ctx_lens = [4] * len(seqlens)
            args = _packed(m, seqlens, ctx_lens)
            tracker = MemTracker()
            tracker.track_external(m, opt)
            with tracker:
                for _ in range(2):                                   # the 2nd step has Adam states
                    m(*args).square().mean().backward()
                    opt.step()
                    opt.zero_grad()
                    tracker.reset_mod_stats()
            measured = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]
            state = F.zero3_state_bytes(shape.dit_params(), world=1, bf16=False)
            est = F.peak_bytes(shape, seqlens, ctx_lens, state, 4, checkpointing, path, grads_live=False)
            assert abs(est - measured) / measured < 0.20, (checkpointing, seqlens, est, measured)


def test_zero3_and_ulysses_formulas():
    st = F.zero3_state_bytes(1_000_000, world=8, bf16=True)
    assert (st.params, st.grads, st.optimizer) == (250_000, 250_000, 1_500_000)
    assert F.ulysses_alltoall_bytes(8192, 1536, sp=4, act_bytes=2) == 4 * 8192 * 1536 * 2 // 4
    assert F.ulysses_alltoall_bytes(8192, 1536, sp=1) == 0
