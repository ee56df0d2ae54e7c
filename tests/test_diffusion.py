"""Flow matching: timestep shift, a tiny overfit where the loss falls, sampling at unseen sizes."""
import torch

from sora.config import DiffusionConfig
from sora.diffusion.flow import add_noise, first_frame_tokens, flow_loss_sum, sample_timesteps, token_shift
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
    x, cu, mx, grid, _ = packed_inputs([[3, 2, 3], [2, 3, 3]], model.dit.in_dim, seed=seed)
    given = first_frame_tokens(cu, grid, torch.tensor([True, True]))
    return x, cu, mx, grid, given


def test_sampling_holds_given_frame_and_conditions_the_rest_on_it():
    model, cfg = tiny_model()
    model.eval()
    noise, cu, mx, grid, given = _given_inputs(model, seed=7)
    caps = ["a red circle moving left", "a blue square moving up"]
    outs = []
    for s in (1, 2):
        x_given = torch.randn(noise.shape, generator=torch.Generator().manual_seed(s)) * 3.0
        out = sample(model, noise, cu, mx, grid, caps, steps=3, guidance=2.0, diffusion_cfg=cfg.diffusion,
                     method="heun", given=given, x_given=x_given)
        assert torch.equal(out[given], x_given[given])            # the given frame is never touched
        outs.append(out)
    assert not torch.allclose(outs[0][~given], outs[1][~given])   # the other frames depend on it
    # the flag itself reaches the model (same input, marked or not, predicts differently)
    t = torch.tensor([0.5, 0.5])
    with torch.no_grad():
        marked = model(noise, cu, mx, grid, t, caps, given=given)
        plain = model(noise, cu, mx, grid, t, caps)
    assert not torch.allclose(marked, plain)


def test_loss_scores_only_tokens_that_are_not_given():
    from sora.train.trainer import StepInput, flow_matching_loss

    model, _ = tiny_model()
    x0, cu, mx, grid, given = _given_inputs(model, seed=8)
    t = torch.tensor([0.3, 0.8])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(9))

    def loss(noise):
        inp = StepInput(x0, noise, t, cu, mx, grid, ["a", "b"], None, x0.shape[0], given)
        with torch.no_grad():
            return flow_matching_loss(model, inp)

    objective, mean, tokens = loss(noise)
    assert int(tokens) == x0.shape[0] and torch.isclose(objective, mean.float())
    with torch.no_grad():   # the reference: given tokens enter clean, and only the others are scored
        xt = torch.where(given[:, None], x0, add_noise(x0, noise, t[sample_index(cu, x0.shape[0])]))
        pred = model(xt, cu, mx, grid, t, ["a", "b"], given=given)
    ref = (pred - (noise - x0)).pow(2).mean(1)[~given].mean()
    torch.testing.assert_close(mean.float(), ref, rtol=1e-6, atol=1e-7)
    bumped = noise.clone()
    bumped[given] += 5.0                 # noise that given tokens never receive changes nothing
    torch.testing.assert_close(loss(bumped)[1], mean, rtol=0, atol=0)
    bumped[~given] += 1.0
    assert not torch.isclose(loss(bumped)[1], mean)
