"""Run under torchrun by tests/test_zero3.py: a few ZeRO-3 steps on fixed packs.

With W ranks, rank r trains on packs[r::W] of each step; with 1 rank it trains on all packs of a
step concatenated into one pack. Writes the full gradients of the first step and the parameters
before and after every step (gathered) so the test can compare the two runs. A third argument
`lora` trains LoRA adapters (rank 4) on the frozen model instead of every weight.
"""
import sys

import torch
import torch.distributed as dist

from sora.config import load_config
from sora.data.packing import PackItem, pack
from sora.diffusion.flow import first_frame_tokens
from sora.models.t2v import TextToVideo
from sora.parallel.dims import init_distributed
from sora.train.checkpoint import gather_full_state
from sora.train.engine import build_engine
from sora.train.trainer import flow_matching_loss, step_input

CAPS = ["a red circle moving left", "a blue square moving up", "", "a white triangle moving down"]


def make_pack(step, which, cfg):
    """Deterministic samples (latents [C, T, H, W]) + their noise, times and given tokens; sizes
    differ per pack (images and videos); one video trains image-to-video (first frame given), the
    other whole."""
    g = torch.Generator().manual_seed(1000 * step + which)
    grids = [(1, 2, 3), (3, 2, 2), (1, 1, 1)] if which == 0 else [(5, 2, 3), (1, 4, 4)]
    (pt, ph, pw), c = cfg.model.patch, cfg.vae.latent_channels
    items = [PackItem(torch.randn(c, t * pt, h * ph, w * pw, generator=g), (t, h, w), CAPS[(i + which) % 4],
                      f"{which}-{i}") for i, (t, h, w) in enumerate(grids)]
    b = pack(items)
    t = torch.rand(b.num_samples, generator=g)
    noise = torch.randn(tuple(b.latents.shape), generator=g)
    given = first_frame_tokens(b.cu_seqlens, b.grid, torch.arange(b.num_samples) % 2 == 1)
    return items, t, noise, given


def main(out_path, steps, lora=False):
    dims = init_distributed()
    cfg = load_config("configs/demo.yaml", ["lora.rank=4" if lora else "lora.rank=0","model.depth=2", "model.width=48", "model.heads=4", "text.dim=32",
                                            "text.layers=1", "optim.warmup=1", "optim.lr=1e-2",
                                            # gradients that are exactly zero in theory (key biases) are
                                            # rounding noise; a larger eps keeps Adam from amplifying it
                                            "optim.eps=1e-6", "train.steps=10"])
    torch.manual_seed(0)
    model = TextToVideo(cfg)
    with torch.no_grad():  # leave the zero-init regime so every parameter gets a gradient
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    if lora:   # its B starts at zero: perturb the adapters too, so every one gets a gradient
        model.add_lora(cfg.lora)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05 * p.requires_grad)
    engine, _ = build_engine(cfg, model, bf16=False)
    from deepspeed.utils import safe_get_full_grad

    record = {f"init/{name}": w for name, w in gather_full_state(engine.module).items()}
    for step in range(steps):
        packs = [make_pack(step, w, cfg) for w in range(2)]
        if dims.world == 1:   # one rank: both ranks' packs as one
            batch = pack(packs[0][0] + packs[1][0])
            t, noise, given = (torch.cat([p[i] for p in packs]) for i in (1, 2, 3))
        else:
            items, t, noise, given = packs[dims.rank]
            batch = pack(items)
        inp = step_input(batch, t, noise, given, cfg, engine.module.dit.kernels, dims)
        objective, loss, tokens = flow_matching_loss(engine, inp, batch.values_per_token)
        engine.backward(objective)
        if step == 0:
            for name, p in engine.module.named_parameters():
                if not p.requires_grad:
                    continue
                g = safe_get_full_grad(p)
                if dims.rank == 0:
                    record[f"grad/{name}"] = g.detach().clone()
        engine.step()
        record[f"loss/{step}"] = loss.detach().clone()
        for name, w in gather_full_state(engine.module).items():
            record[f"param{step}/{name}"] = w
    if dims.rank == 0:
        torch.save(record, out_path)
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), lora=sys.argv[3:] == ["lora"])
