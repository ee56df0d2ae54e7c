"""Flow matching: timestep shift, a tiny overfit where the loss falls, sampling at unseen sizes."""
import torch

from sora.config import DiffusionConfig
from sora.diffusion.flow import add_noise, first_frame_tokens, flow_loss_sum, sample_timesteps, token_shift
from sora.diffusion.samplers import guided_velocity, sample
from sora.ops.patchify import unpatchify_packed_torch
from tests.test_models import packed_inputs, tiny_model


def per_value(model, cu, grid, tokens):
    """A per-token tensor [N] of a pack -> the same per latent value [N*P]."""
    p = model.dit.in_dim
    return unpatchify_packed_torch(tokens[:, None].expand(-1, p), cu, grid, model.dit.patch, model.dit.channels)


def test_shift_grows_with_tokens_and_stays_in_range():
    cfg = DiffusionConfig(base_tokens=64, max_tokens=1024, shift_base=1.0, shift_max=3.0)
    s = token_shift(torch.tensor([10, 64, 256, 1024, 5000]), cfg)
    assert s[0] == s[1] == 1.0 and s[-1] == s[-2] == 3.0 and s[1] < s[2] < s[3]
    t = sample_timesteps(torch.tensor([64] * 2000 + [1024] * 2000), cfg, torch.Generator().manual_seed(0))
    assert ((t > 0) & (t < 1)).all()
    assert t[2000:].mean() > t[:2000].mean() + 0.1   # bigger samples are pushed towards noise


def test_flow_target_and_interpolation():
    x0, noise = torch.randn(15), torch.randn(15)
    t = torch.tensor([0.0, 1.0, 0.5, 0.5, 0.25]).repeat_interleave(3)
    xt = add_noise(x0, noise, t)
    torch.testing.assert_close(xt[:3], x0[:3])
    torch.testing.assert_close(xt[3:6], noise[3:6])
    # the exact velocity gives zero loss; the sum is over tokens of each token's mean
    assert flow_loss_sum(noise - x0, x0, noise, torch.ones(15), 3).item() == 0.0
    torch.testing.assert_close(flow_loss_sum(torch.zeros(15), x0, noise, torch.ones(15), 3),
                               (noise - x0).pow(2).view(5, 3).mean(1).sum())


def test_tiny_overfit_loss_falls():
    model, cfg = tiny_model()
    x0, cu, grid, _ = packed_inputs([[1, 2, 3], [3, 2, 2]], model, seed=1)
    layout, p = model.layout(cu, grid), model.dit.in_dim
    caps = ["a red circle moving left", "a blue square moving up"]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for step in range(150):
        lens = (cu[1:] - cu[:-1]).long()
        t = sample_timesteps(lens, cfg.diffusion, g)
        noise = torch.randn(x0.shape, generator=g)
        pred = model(add_noise(x0, noise, t.repeat_interleave(lens * p)), layout, t, caps)
        loss = flow_loss_sum(pred, x0, noise, torch.ones_like(x0), p) / int(cu[-1])
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
        noise, cu, grid, _ = packed_inputs(grids, model, seed=5)
        caps = ["a red circle moving left"] * len(grids)
        for method in ("euler", "heun"):
            out = sample(model, noise, cu, grid, caps, steps=3, guidance=3.0, diffusion_cfg=cfg.diffusion, method=method)
            assert out.shape == noise.shape and torch.isfinite(out).all()
    # CFG in one packed forward equals running the two branches separately
    noise, cu, grid, _ = packed_inputs([[2, 3, 3]], model, seed=6)
    t = torch.tensor([0.7])
    doubled = model.layout(torch.cat([cu, cu[1:] + cu[-1]]), torch.cat([grid, grid]))
    v = guided_velocity(model, noise, doubled, t, ["a red circle moving left"], 2.5)
    with torch.no_grad():
        vc = model(noise, model.layout(cu, grid), t, ["a red circle moving left"])
        vu = model(noise, model.layout(cu, grid), t, [""])
    torch.testing.assert_close(v, vu + 2.5 * (vc - vu), rtol=1e-5, atol=1e-6)


def test_first_frame_tokens_mark_frame_zero_of_chosen_videos_only():
    grid = torch.tensor([[1, 3, 5], [5, 4, 4], [3, 2, 7], [2, 1, 1]], dtype=torch.int32)
    cu = torch.zeros(5, dtype=torch.int32)
    cu[1:] = grid.prod(1).cumsum(0)
    given = first_frame_tokens(cu, grid, torch.tensor([True, True, False, True]))
    expected = torch.zeros(int(cu[-1]), dtype=torch.bool)
    expected[15:15 + 16] = True          # the video's first 4x4 frame; the image has no frame to spare
    expected[15 + 80 + 42] = True        # the 2x1x1 clip's first token; the unchosen clip keeps none
    assert torch.equal(given, expected)


def _given_inputs(model, seed):
    x, cu, grid, _ = packed_inputs([[3, 2, 3], [2, 3, 3]], model, seed=seed)
    given = first_frame_tokens(cu, grid, torch.tensor([True, True]))
    return x, cu, grid, given


def test_sampling_holds_given_frame_and_conditions_the_rest_on_it():
    model, cfg = tiny_model()
    model.eval()
    noise, cu, grid, given = _given_inputs(model, seed=7)
    held = per_value(model, cu, grid, given)                         # [N*P] the given tokens' values
    caps = ["a red circle moving left", "a blue square moving up"]
    outs = []
    for s in (1, 2):
        x_given = torch.randn(noise.shape, generator=torch.Generator().manual_seed(s)) * 3.0
        out = sample(model, noise, cu, grid, caps, steps=3, guidance=2.0, diffusion_cfg=cfg.diffusion,
                     method="heun", given=given, x_given=x_given)
        assert torch.equal(out[held], x_given[held])               # the given frame is never touched
        outs.append(out)
    assert not torch.allclose(outs[0][~held], outs[1][~held])     # the other frames depend on it
    # the flag itself reaches the model (same input, marked or not, predicts differently)
    t = torch.tensor([0.5, 0.5])
    with torch.no_grad():
        marked = model(noise, model.layout(cu, grid), t, caps, given=given)
        plain = model(noise, model.layout(cu, grid), t, caps)
    assert not torch.allclose(marked, plain)


def test_loss_scores_only_tokens_that_are_not_given():
    from sora.data.packing import PackedBatch
    from sora.parallel.dims import ParallelDims
    from sora.train.trainer import flow_matching_loss, step_input

    model, cfg = tiny_model()
    x0, cu, grid, given = _given_inputs(model, seed=8)
    p = model.dit.in_dim
    t = torch.tensor([0.3, 0.8])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(9))
    batch = PackedBatch(x0, cu, int((cu[1:] - cu[:-1]).max()), grid, ["a", "b"])
    dims = ParallelDims(rank=0, world=1, sp=1)

    def loss(noise):
        with torch.no_grad():
            return flow_matching_loss(model, step_input(batch, t, noise, given, cfg, model.dit.kernels, dims), p)

    objective, mean, tokens = loss(noise)
    assert int(tokens) == int(cu[-1]) and torch.isclose(objective, mean.float())
    held = per_value(model, cu, grid, given)
    with torch.no_grad():   # the reference: given tokens enter clean, and only the others are scored
        lens = (cu[1:] - cu[:-1]).long()
        xt = torch.where(held, x0, add_noise(x0, noise, t.repeat_interleave(lens * p)))
        pred = model(xt, model.layout(cu, grid), t, ["a", "b"], given=given)
    ref = (pred - (noise - x0))[~held].pow(2).mean()
    torch.testing.assert_close(mean.float(), ref, rtol=1e-6, atol=1e-7)
    bumped = noise.clone()
    bumped[held] += 5.0                  # noise that given tokens never receive changes nothing
    torch.testing.assert_close(loss(bumped)[1], mean, rtol=0, atol=0)
    bumped[~held] += 1.0
    assert not torch.isclose(loss(bumped)[1], mean)
