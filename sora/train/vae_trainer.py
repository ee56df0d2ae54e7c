"""Stage 1: train the causal VAE on raw clips of mixed sizes, under DeepSpeed like the DiT.

Each rank reads its own shards (`rank::world`) and takes clips up to a pixel budget per step; the
clips (of different shapes) run one by one and their pixel-weighted losses are summed into one
backward, so DeepSpeed reduces gradients once per step. The VAE's parameters stay whole on every
rank (ZeRO stage <= 2: optimizer state and gradients are sharded): under ZeRO-3 every forward
gathers parameters collectively, which would need the same number of clips on every rank.

Losses: L1 + L2 reconstruction + KL, optionally a perceptual feature loss and a patch-discriminator
hinge loss (the discriminator trains from `vae.adv_start`, the generator's adversarial weight ramps
up over `vae.adv_warmup` steps after that). PSNR and SSIM on held-out clips go to metrics.jsonl
every `vae.eval_every` steps and at the end.

Checkpoints, exact resume (the discriminator, every RNG and the clip stream's position included),
preemption and the metrics record are the shared plumbing of `sora.train.session`.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
import torch.distributed as dist

from sora.config import Config
from sora.data.pipeline import VideoStream
from sora.shapes import ShapeRules
from sora.data.shards import SkipStats, list_shards
from sora.train.artifacts import build_vae, save_weights
from sora.train.engine import grad_norm
from sora.train.faults import PreemptionFlag
from sora.train.session import Checkpointed, TrainSession
from sora.train.vae_eval import evaluate, heldout_clips, latent_stats
from sora.train.vae_losses import PatchDiscriminator, PerceptualNet, adv_ramp, hinge_d_loss, kl_loss

log = logging.getLogger("sora.train")


class ClipBatches:
    """The clips of each step: drawn from the stream until the step's pixel budget is met. The
    stream is seeded end to end, so its position (clips taken) is all a resume needs."""

    def __init__(self, videos: VideoStream, pixel_budget: int):
        self.stream = iter(videos)
        self.budget = pixel_budget
        self.taken = 0

    def _next(self) -> torch.Tensor:
        video = next(self.stream).data
        self.taken += 1
        return video

    def next_step(self) -> tuple[list[torch.Tensor], int]:
        """-> clips [3, T, H, W] each, and their pixels (per channel) in all."""
        clips, pixels = [], 0
        while not clips or pixels < self.budget:
            clips.append(self._next())
            pixels += clips[-1][0].numel()
        return clips, pixels

    def skip(self, clips: int) -> None:
        for _ in range(clips):
            self._next()


def vae_loss(vae, video: torch.Tensor, cfg, perceptual=None, disc=None, adv_factor: float = 0.0):
    """video [3, T, H, W] -> (loss, reconstruction, parts for logging). `vae` is the module or its
    engine; `disc` the discriminator's module (frozen here: the generator's loss must not train it)."""
    x = video[None]
    rec, mean, logvar = vae(x)
    rec, mean, logvar = rec.float(), mean.float(), logvar.float()
    x = x.float()
    l1 = (rec - x).abs().mean()
    l2 = (rec - x).pow(2).mean()
    kl = kl_loss(mean, logvar)
    loss = cfg.l1_weight * l1 + cfg.l2_weight * l2 + cfg.kl_weight * kl
    parts = {"l1": l1.detach(), "mse": l2.detach(), "kl": kl.detach()}
    if perceptual is not None:
        p = perceptual(rec, x)
        loss = loss + cfg.perceptual_weight * p
        parts["perceptual"] = p.detach()
    if disc is not None and adv_factor > 0:
        g = -disc(rec.to(next(disc.parameters()).dtype)).float().mean()
        loss = loss + cfg.adv_weight * adv_factor * g
        parts["adv_g"] = g.detach()
    return loss, rec, parts


def train_step(engine, disc_engine, clips, pixels: int, cfg: Config, perceptual, step: int) -> tuple[dict, float]:
    """One update of the VAE and, from vae.adv_start, one of the discriminator, on the step's
    clips (pixel-weighted means). -> (the loss parts, 0-d tensors, pixel-weighted; the adversarial factor)."""
    adv = adv_ramp(step, cfg.vae.adv_start, cfg.vae.adv_warmup) if disc_engine is not None else 0.0
    disc = None
    if disc_engine is not None:
        disc = disc_engine.module.requires_grad_(False)   # the generator's loss must not train D
    total, recs, acc = 0.0, [], {}
    for video in clips:
        w = video[0].numel() / pixels
        loss, rec, parts = vae_loss(engine, video, cfg.vae, perceptual, disc, adv)
        total = total + loss * w
        recs.append(rec.detach())
        for k, v in parts.items():
            acc[k] = acc.get(k, 0.0) + v * w
    engine.backward(total)
    engine.step()
    if disc_engine is not None and step >= cfg.vae.adv_start:
        disc_engine.module.requires_grad_(True)
        d_total = 0.0
        for video, rec in zip(clips, recs):
            real, fake = disc_engine(video[None]), disc_engine(rec.to(video.dtype))
            d_total = d_total + hinge_d_loss(real.float(), fake.float()) * (video[0].numel() / pixels)
        disc_engine.backward(d_total)
        disc_engine.step()
        acc["adv_d"] = d_total.detach()
    return acc, adv


def train_vae(cfg: Config, preempt: PreemptionFlag | None = None) -> Path:
    """Train, checkpointing every run.save_every steps; resumes exactly from the newest checkpoint
    in run.dir. Stops like the DiT trainer (faults.Preempted after SIGTERM/SIGUSR1, faults.StorageError)."""
    session = TrainSession(cfg, "vae", preempt)
    dims, device, dtype = session.dims, session.device, session.dtype
    torch.manual_seed(cfg.run.seed)                       # identical init on every rank
    vae = build_vae(cfg)
    engine, sched = session.build_engine(vae, whole_params=True)
    engines = {"vae": engine}
    perceptual = PerceptualNet(cfg.vae.perceptual_path).to(device) if cfg.vae.perceptual_weight > 0 else None
    disc_engine = None
    if cfg.vae.adv_weight > 0:
        disc_engine, _ = session.build_engine(PatchDiscriminator(cfg.vae.disc_channels), whole_params=True)
        engines["disc"] = disc_engine
    torch.manual_seed(cfg.run.seed * 1000 + dims.rank + 1)   # each rank its own posterior samples

    stats = SkipStats()
    videos = VideoStream(list_shards(cfg.data.path, cfg.data.split), cfg.data, ShapeRules(cfg.vae.ft, cfg.vae.fh),
                         dims.dp_rank, dims.dp, seed=cfg.run.seed, stats=stats)
    batches = ClipBatches(videos, cfg.data.tokens_per_batch * cfg.vae.fh * cfg.vae.fh * cfg.vae.ft)  # pixels per rank
    eval_set = heldout_clips(cfg, SkipStats())
    start, clips_taken = session.resume(Checkpointed(engines, {}, "clips_taken", lambda: batches.taken))
    batches.skip(clips_taken)      # also for a finished run: the latent statistics read on from there
    if dims.is_main:
        log.info("VAE: %.2fM parameters, %d ranks, ZeRO stage %d, %d held-out clips for PSNR/SSIM",
                 sum(p.numel() for p in vae.parameters()) / 1e6, dims.world, min(cfg.train.zero_stage, 2),
                 len(eval_set))
    engine.train()
    with session:
        for step in session.steps(start):
            t0 = time.perf_counter()
            clips, pixels = batches.next_step()
            acc, adv = train_step(engine, disc_engine, [c.to(device, dtype) for c in clips], pixels, cfg,
                                  perceptual, step)
            last = step == cfg.train.steps - 1
            if step % cfg.run.log_every == 0 or last:
                names = sorted(acc)
                vals = torch.stack([acc[k].double().cpu() for k in names] + [torch.tensor(float(pixels), dtype=torch.float64)])
                if dims.world > 1:                            # means over ranks; pixels summed
                    dist.all_reduce(vals)
                    vals[:-1] /= dims.world
                parts = dict(zip(names, vals[:-1].tolist()))
                dt = time.perf_counter() - t0
                rec = {"step": step, "loss": parts["l1"] + parts["mse"], "mse": parts["mse"],
                       "psnr": 10 * math.log10(4.0 / max(parts["mse"], 1e-10)), "kl": parts["kl"],
                       "lr": sched.get_last_lr()[0], "grad_norm": grad_norm(engine),
                       "pixels": int(vals[-1]), "pixels_per_s": vals[-1].item() / dt, "step_time_s": dt}
                rec.update({k: v for k, v in parts.items() if k not in ("l1", "mse", "kl")})
                if disc_engine is not None:
                    rec["adv_factor"] = adv
                if eval_set and ((cfg.vae.eval_every and step and step % cfg.vae.eval_every == 0) or last):
                    rec.update(evaluate(engine.module, eval_set, dims.rank, dims.world, device, dtype,
                                        cfg.vae.chunk_frames))
                session.log(rec, stats)
                session.bar.set_postfix(loss=f"{rec['loss']:.4f}", psnr=f"{rec['psnr']:.1f}")

        def export() -> None:
            vae = engine.module.eval()
            if dims.is_main:
                mean, std = latent_stats(vae, batches.stream)
                vae.latent_mean.copy_(mean)
                vae.latent_std.copy_(std)
                save_weights({k: v.float() for k, v in vae.state_dict().items()}, session.run_dir / "vae.safetensors")
                log.info("VAE saved to %s (latent mean %s, std %s)", session.run_dir / "vae.safetensors",
                         [round(v, 3) for v in mean.tolist()], [round(v, 3) for v in std.tolist()])

        return session.finish(export)
