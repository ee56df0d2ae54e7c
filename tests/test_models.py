"""VAE causality, DiT on packed mixed sizes (videos and images), per-sample isolation."""
import pytest
import torch

from sora.config import load_config
from sora.diffusion.flow import first_frame_tokens
from sora.models.t2v import TextToVideo
from sora.models.vae import CausalVAE


@pytest.mark.parametrize("ft,fh", [(2, 4), (4, 4)])
def test_vae_shapes_and_causality(ft, fh):
    torch.manual_seed(0)
    vae = CausalVAE(channels=8, latent_channels=3, ft=ft, fh=fh).eval()
    frames = 1 + 3 * ft
    x = torch.randn(1, 3, frames, 16, 24)
    with torch.no_grad():
        z = vae.encode(x)
        assert z.shape == (1, 3, 4, 16 // fh, 24 // fh)
        assert vae.decode(z).shape == x.shape
        for k in range(1, frames):  # change frame k: latent groups before k's group stay identical
            x2 = x.clone()
            x2[:, :, k] += torch.randn_like(x2[:, :, k])
            z2 = vae.encode(x2)
            group = (k + ft - 1) // ft
            assert torch.equal(z2[:, :, :group], z[:, :, :group]), f"frame {k} leaked into earlier latents"
            assert not torch.equal(z2[:, :, group], z[:, :, group])
        # the decoder is causal too: changing latent frame j leaves earlier output frames unchanged
        z3 = z.clone()
        z3[:, :, 2] += 1
        y, y3 = vae.decode(z), vae.decode(z3)
        first_changed = 1 + (2 - 1) * ft
        assert torch.equal(y[:, :, :first_changed], y3[:, :, :first_changed])
        # an image is a one-frame video
        assert vae.encode(x[:, :, :1]).shape[2] == 1


def test_vae_rejects_bad_frames():
    vae = CausalVAE(channels=8, latent_channels=3, ft=2, fh=4)
    with pytest.raises(ValueError, match="1 \\+ 2k"):
        vae.encode(torch.randn(1, 3, 4, 16, 16))


def tiny_model(**over):
    cfg = load_config("configs/demo.yaml", ["model.depth=2", "model.width=48", "model.heads=4", "text.dim=32",
                                            "text.layers=1", *[f"{k}={v}" for k, v in over.items()]])
    torch.manual_seed(0)
    model = TextToVideo(cfg)
    # the zero-initialised gates/final layer make a fresh DiT ignore its input; perturb them for these tests
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model, cfg


def packed_inputs(grids, model, seed=0):
    """Random packed latents [N*P] for token grids (B, 3), with cu_seqlens, grid and times."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.tensor(grids, dtype=torch.int32)
    lens = grid.prod(1)
    cu = torch.zeros(len(grids) + 1, dtype=torch.int32)
    cu[1:] = lens.cumsum(0)
    x = torch.randn(int(cu[-1]) * model.dit.in_dim, generator=g)
    t = torch.rand(len(grids), generator=g)
    return x, cu, grid, t


def rows(x, cu, b, p):
    """Sample b's latent values in packed latents x [N*P]."""
    return x[int(cu[b]) * p:int(cu[b + 1]) * p]


GRIDS = [[1, 3, 5], [5, 4, 4], [1, 1, 1], [3, 2, 7]]   # image, video, single token, odd video
CAPTIONS = ["a red circle moving left", "a blue square moving up", "", "a white triangle moving down"]


def test_dit_forward_backward_mixed_sizes():
    model, cfg = tiny_model()
    x, cu, grid, t = packed_inputs(GRIDS, model)
    x.requires_grad_(True)
    given = first_frame_tokens(cu, grid, torch.ones(len(GRIDS), dtype=torch.bool))   # the videos' first frames
    out = model(x, model.layout(cu, grid), t, CAPTIONS, given=given)
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.pow(2).mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"


def test_samples_do_not_interact():
    """Perturbing one sample's latent, time or caption changes no other sample's output."""
    model, _ = tiny_model()
    model.eval()
    x, cu, grid, t = packed_inputs(GRIDS, model)
    p, layout = model.dit.in_dim, model.layout(cu, grid)
    with torch.no_grad():
        base = model(x, layout, t, CAPTIONS)
        x2 = x.clone()
        rows(x2, cu, 1, p).add_(torch.randn_like(rows(x2, cu, 1, p)))
        t2 = t.clone()
        t2[1] = 0.123
        caps = list(CAPTIONS)
        caps[1] = "a green triangle moving right"
        out = model(x2, layout, t2, caps)
    assert not torch.allclose(rows(out, cu, 1, p), rows(base, cu, 1, p))
    for b in (0, 2, 3):
        torch.testing.assert_close(rows(out, cu, b, p), rows(base, cu, b, p), rtol=1e-5, atol=1e-6)


def test_packed_equals_one_by_one():
    model, _ = tiny_model()
    model.eval()
    x, cu, grid, t = packed_inputs(GRIDS, model, seed=3)
    p = model.dit.in_dim
    with torch.no_grad():
        packed = model(x, model.layout(cu, grid), t, CAPTIONS)
        for b in range(len(GRIDS)):
            n = int(cu[b + 1] - cu[b])
            one = model(rows(x, cu, b, p), model.layout(torch.tensor([0, n], dtype=torch.int32), grid[b:b + 1]),
                        t[b:b + 1], [CAPTIONS[b]])
            torch.testing.assert_close(rows(packed, cu, b, p), one, rtol=1e-5, atol=1e-6)


def test_activation_checkpointing_same_gradients():
    model, _ = tiny_model()
    ck, _ = tiny_model(**{"model.checkpointing": "true"})
    ck.load_state_dict(model.state_dict())
    x, cu, grid, t = packed_inputs(GRIDS, model)
    for m in (model, ck):
        m(x, m.layout(cu, grid), t, CAPTIONS).pow(2).sum().backward()
    for (n, a), (_, b) in zip(model.named_parameters(), ck.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6, msg=n)


def test_text_to_video_runs_in_bfloat16():
    """bf16 weights (DeepSpeed bf16 on GPUs): float32 sinusoid features must not meet bf16 weights."""
    from sora.config import load_config

    cfg = load_config(None, ["model.depth=1", "model.width=48", "model.heads=4"])
    model = TextToVideo(cfg).to(torch.bfloat16)
    x = torch.randn((24 + 4) * model.dit.in_dim, dtype=torch.bfloat16)
    layout = model.layout(torch.tensor([0, 24, 28], dtype=torch.int32), torch.tensor([[1, 4, 6], [1, 2, 2]], dtype=torch.int32))
    out = model(x, layout, torch.tensor([0.5, 0.9], dtype=torch.bfloat16), ["a red circle moving left", ""])
    out.float().square().mean().backward()
    assert out.dtype == torch.bfloat16 and out.shape == x.shape and torch.isfinite(out.float()).all()
