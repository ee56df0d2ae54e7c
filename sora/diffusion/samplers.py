"""ODE samplers for the flow (t: 1 -> 0) with classifier-free guidance on packed batches.

Conditional and unconditional branches run as one packed batch: the same samples twice, the
second half with the negative caption (empty unless the model family has one, e.g. Wan's). Packing makes CFG a single forward.
Tokens marked `given` (image-to-video: a known first frame) hold their clean value throughout.
"""
from __future__ import annotations

import torch

from sora.diffusion.flow import shift_time, token_shift


def timestep_schedule(steps: int, shift: float) -> torch.Tensor:
    """[steps + 1] times from 1 to 0: a uniform grid, shifted towards noise (the Wan repo's sampling
    sigmas have this form: linspace(1, 0, steps + 1) shifted by its sample_shift)."""
    return shift_time(torch.linspace(1.0, 0.0, steps + 1), torch.tensor(float(shift)))


@torch.no_grad()
def guided_velocity(model, x, layout, t, captions, guidance: float, given=None, held=None, negative: str = ""):
    """x [N*P] packed latents -> guided velocity [N*P]. With guidance the model runs once on the
    pack twice over: `layout` is then the doubled pack's (conditional first, then every sample with
    the `negative` caption), and t [B], captions and given [N] bool (tokens given clean) are the
    single pack's. held [N*P] bool: the given tokens' values, whose velocity is zero."""
    if guidance == 1.0:
        v = model(x, layout, t, captions, given=given)
    else:
        n = x.numel()
        given2 = None if given is None else torch.cat([given, given])
        v = model(torch.cat([x, x]), layout, torch.cat([t, t]), list(captions) + [negative] * len(captions),
                  given=given2)
        v_cond, v_uncond = v[:n], v[n:]
        v = v_uncond + guidance * (v_cond - v_uncond)
    return v if held is None else v.masked_fill(held, 0.0)


@torch.no_grad()
def sample(model, noise, cu, grid, captions, steps: int, guidance: float, diffusion_cfg,
           method: str = "heun", tokens_for_shift: int | None = None, given=None, x_given=None,
           negative: str = "", shift: float = 0.0):
    """Integrate packed latents noise [N*P] (token grids [B, 3], cu_seqlens [B+1]) from t=1 to data
    at t=0. All samples share one schedule (same size): shifted by `shift` when > 0, else as
    training shifts this many tokens. given [N] bool + x_given [N*P] (optional): tokens fixed to
    clean values (image-to-video). negative: the unconditional branch's caption."""
    if shift <= 0:
        tokens = tokens_for_shift or int((cu[1:] - cu[:-1]).max())
        shift = float(token_shift(torch.tensor([tokens]), diffusion_cfg))
    ts = timestep_schedule(steps, shift).to(noise.device)
    b = cu.numel() - 1
    pack = model.layout(cu, grid)
    # one layout for every step; with guidance, of the pack twice over (conditional, unconditional)
    layout = pack if guidance == 1.0 else model.layout(torch.cat([cu, cu[1:] + cu[-1]]), torch.cat([grid, grid]))
    held = None
    if given is not None:
        p = noise.numel() // given.numel()
        held = model.dit.kernels.unpatchify(given[:, None].expand(-1, p).to(noise.dtype).contiguous(), pack,
                                            model.dit.patch, model.dit.channels) > 0        # [N*P]
    x = noise if held is None else torch.where(held, x_given, noise)
    for i in range(steps):
        t0, t1 = ts[i], ts[i + 1]
        v0 = guided_velocity(model, x, layout, t0.expand(b), captions, guidance, given, held, negative)
        x_euler = x + (t1 - t0) * v0
        if method == "euler" or i == steps - 1:   # last step to t=0: Heun's corrector would evaluate at t=0 anyway
            x = x_euler
        elif method == "heun":
            v1 = guided_velocity(model, x_euler, layout, t1.expand(b), captions, guidance, given, held, negative)
            x = x + (t1 - t0) * 0.5 * (v0 + v1)
        else:
            raise ValueError(f"unknown sampler '{method}' (euler | heun)")
    return x
