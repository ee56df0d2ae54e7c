"""Flow matching: timestep shift, a tiny overfit where the loss falls, sampling at unseen sizes."""
import torch

from sora.config import DiffusionConfig
from sora.diffusion.flow import add_noise, flow_loss_sum, sample_timesteps, token_shift
from sora.diffusion.samplers import guided_velocity, sample
from sora.ops.packing_index import sample_index
from tests.test_models import packed_inputs, tiny_model


def test_shift_grows_with_tokens_and_stays_in_range():
    cfg = DiffusionConfig(base_tokens=64, max_tokens=1024, shift_base=1.0, shift_max=3.0)
    s = token_shift(torch.tensor([10, 64, 256, 1024, 5000]), cfg)
    assert s[0] == s[1] == 1.0 and s[-1] == s[-2] == 3.0 and s[1] < s[2] < s[3]
    t = sample_timesteps(torch.tensor([64] * 2000 + [1024] * 2000), cfg, torch.Generator().manual_seed(0))
    assert ((t > 0) & (t < 1)).all()
    assert t[2000:].mean() > t[:2000].mean() + 0.1   # bigger samples are pushed towards noise


def test_flow_target_and_interpolation():
    x0, noise = torch.randn(5, 3), torch.randn(5, 3)
    t = torch.tensor([0.0, 1.0, 0.5, 0.5, 0.25])
    xt = add_noise(x0, noise, t)
    torch.testing.assert_close(xt[0], x0[0])
    torch.testing.assert_close(xt[1], noise[1])
    # the exact velocity gives zero loss
    assert flow_loss_sum(noise - x0, x0, noise).item() == 0.0


def test_tiny_overfit_loss_falls():
    model, cfg = tiny_model()
    x0, cu, mx, grid, _ = packed_inputs([[1, 2, 3], [3, 2, 2]], model.dit.in_dim, seed=1)
    caps = ["a red circle moving left", "a blue square moving up"]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for step in range(150):
        t = sample_timesteps((cu[1:] - cu[:-1]).long(), cfg.diffusion, g)
        noise = torch.randn(x0.shape, generator=g)
        pred = model(add_noise(x0, noise, t[sample_index(cu)]), cu, mx, grid, t, caps)
        loss = flow_loss_sum(pred, x0, noise) / x0.shape[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.6 * first, (first, last)


def test_sampling_any_size_and_cfg_batching():
    model, cfg = tiny_model()
    model.eval()
    for grids in ([[3, 5, 7]], [[1, 4, 2], [1, 4, 2]]):   # sizes never seen by anything
        noise, cu, mx, grid, _ = packed_inputs(grids, model.dit.in_dim, seed=5)
        caps = ["a red circle moving left"] * len(grids)
        for method in ("euler", "heun"):
            out = sample(model, noise, cu, mx, grid, caps, steps=3, guidance=3.0, diffusion_cfg=cfg.diffusion, method=method)
            assert out.shape == noise.shape and torch.isfinite(out).all()
    # CFG in one packed forward equals running the two branches separately
    noise, cu, mx, grid, _ = packed_inputs([[2, 3, 3]], model.dit.in_dim, seed=6)
    t = torch.tensor([0.7])
    v = guided_velocity(model, noise, cu, mx, grid, t, ["a red circle moving left"], 2.5)
    with torch.no_grad():
        vc = model(noise, cu, mx, grid, t, ["a red circle moving left"])
        vu = model(noise, cu, mx, grid, t, [""])
    torch.testing.assert_close(v, vu + 2.5 * (vc - vu), rtol=1e-5, atol=1e-6)
