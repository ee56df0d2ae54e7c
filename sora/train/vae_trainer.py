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
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from sora.config import Config, save_config, uses_bf16
from sora.data.loader import VideoStream
from sora.data.pipeline import target_shape, to_model_video
from sora.data.shards import SkipStats, iter_shard_samples, list_shards
from sora.train.artifacts import build_vae, save_weights
from sora.train.metrics import MetricsLogger
from sora.train.schedule import warmup_cosine
from sora.train.vae_losses import PatchDiscriminator, PerceptualNet, adv_ramp, hinge_d_loss, kl_loss, psnr, ssim

log = logging.getLogger("sora.train")


def vae_loss(vae, video: torch.Tensor, cfg, perceptual=None, disc=None, adv_factor: float = 0.0):
    """video [3, T, H, W] -> (loss, reconstruction, parts for logging). `vae` is the module or its engine."""
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


@torch.no_grad()
def latent_stats(vae, videos, n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of latent means over n clips, so the DiT sees ~N(0, 1) latents."""
    p = next(vae.parameters())
    zs = torch.cat([vae.encode_dist(v[None].to(p.device, p.dtype))[0].float().transpose(0, 1).flatten(1)
                    for _, v, _ in _take(videos, n)], 1)
    return zs.mean(1), zs.std(1).clamp(min=1e-4)


def _take(it, n):
    out = []
    for item in it:
        out.append(item)
        if len(out) >= n:
            break
    return out


def heldout_clips(cfg: Config, stats: SkipStats) -> list[tuple[str, torch.Tensor]]:
    """The first `vae.eval_clips` clips of the eval split, in shard order, prepared like training clips."""
    try:
        paths = list_shards(cfg.data.path, cfg.vae.eval_split)
    except FileNotFoundError:
        return []
    clips = []
    for s in iter_shard_samples(paths, stats, max_frames=cfg.data.max_frames):
        shape = target_shape(*s.frames.shape[:3], cfg.vae.ft, cfg.vae.fh, (1, 1, 1), cfg.data.max_frames,
                             cfg.data.max_tokens_per_sample)
        if shape is not None:
            clips.append((s.key, to_model_video(s.frames, shape)))
        if len(clips) >= cfg.vae.eval_clips:
            break
    return clips


@torch.no_grad()
def evaluate(vae, clips, rank: int, world: int, device, dtype, chunk_frames: int = 0) -> dict:
    """Mean per-clip PSNR / SSIM of deterministic reconstructions (latent mean); clips split over ranks."""
    was = vae.training
    vae.eval()
    acc = torch.zeros(3, dtype=torch.float64)
    for _, video in clips[rank::world]:
        x = video[None].to(device, dtype)
        mean, _ = vae.encode_dist(x, chunk_frames)
        rec = vae.decode_unscaled(mean, chunk_frames // vae.ft)[0].float().cpu()
        acc += torch.tensor([psnr(rec, video), ssim(rec, video), 1.0], dtype=torch.float64)
    if world > 1:
        dist.all_reduce(acc)
    vae.train(was)
    n = max(acc[2].item(), 1.0)
    return {"eval_psnr": acc[0].item() / n, "eval_ssim": acc[1].item() / n, "eval_clips": int(acc[2].item())}


def _engine(cfg: Config, module: torch.nn.Module, bf16: bool, lr: float):
    import deepspeed

    from sora.parallel.deepspeed_config import deepspeed_config

    opt = torch.optim.AdamW(module.parameters(), lr=lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps,
                            weight_decay=cfg.optim.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, cfg.optim.warmup, cfg.train.steps, cfg.optim.min_lr_ratio))
    ds = deepspeed_config(cfg, bf16)
    ds["zero_optimization"] = {"stage": min(cfg.train.zero_stage, 2)}   # parameters stay whole: see module doc
    engine, _, _, sched = deepspeed.initialize(model=module, optimizer=opt, lr_scheduler=sched, config=ds)
    return engine, sched


def train_vae(cfg: Config) -> Path:
    from sora.parallel.dims import compute_device, init_distributed

    dims = init_distributed(1, cfg.parallel.timeout_s)
    device = compute_device()
    bf16 = uses_bf16(cfg.train.precision, device.type)
    dtype = torch.bfloat16 if bf16 else torch.float32
    run_dir = Path(cfg.run.dir)
    if dims.is_main:
        save_config(cfg, run_dir / "config.yaml")
    torch.manual_seed(cfg.run.seed)                       # identical init on every rank
    vae = build_vae(cfg)
    engine, sched = _engine(cfg, vae, bf16, cfg.optim.lr)
    perceptual = PerceptualNet(cfg.vae.perceptual_path).to(device) if cfg.vae.perceptual_weight > 0 else None
    disc_engine = None
    if cfg.vae.adv_weight > 0:
        disc_engine, _ = _engine(cfg, PatchDiscriminator(cfg.vae.disc_channels), bf16, cfg.optim.lr)
    torch.manual_seed(cfg.run.seed * 1000 + dims.rank + 1)   # each rank its own posterior samples

    stats = SkipStats()
    videos = VideoStream(list_shards(cfg.data.path, cfg.data.split), cfg.data, cfg.vae.ft, cfg.vae.fh, (1, 1, 1),
                         dims.dp_rank, dims.dp, seed=cfg.run.seed, stats=stats)
    stream = iter(videos)
    eval_stats = SkipStats()
    eval_set = heldout_clips(cfg, eval_stats)
    if dims.is_main:
        log.info("VAE: %.2fM parameters, %d ranks, ZeRO stage %d, %d held-out clips for PSNR/SSIM",
                 sum(p.numel() for p in vae.parameters()) / 1e6, dims.world, min(cfg.train.zero_stage, 2),
                 len(eval_set))
    metrics = MetricsLogger(run_dir, enabled=dims.is_main)
    pixel_budget = cfg.data.tokens_per_batch * cfg.vae.fh * cfg.vae.fh * cfg.vae.ft  # per rank, in pixels
    bar = tqdm(range(cfg.train.steps), desc="vae", dynamic_ncols=True, disable=not dims.is_main)
    engine.train()
    for step in bar:
        start = time.perf_counter()
        clips, pixels = [], 0
        while not clips or pixels < pixel_budget:
            key, video, _ = next(stream)
            clips.append(video.to(device, dtype))
            pixels += video[0].numel()
        adv = adv_ramp(step, cfg.vae.adv_start, cfg.vae.adv_warmup) if disc_engine is not None else 0.0
        if disc_engine is not None:
            disc_engine.module.requires_grad_(False)      # the generator's loss must not train D
        total, recs, acc = 0.0, [], {}
        for video in clips:                               # pixel-weighted mean over the step's clips
            w = video[0].numel() / pixels
            loss, rec, parts = vae_loss(engine, video, cfg.vae, perceptual, disc_engine, adv)
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
                real, fake = disc_engine(video[None]), disc_engine(rec.to(dtype))
                d_total = d_total + hinge_d_loss(real.float(), fake.float()) * (video[0].numel() / pixels)
            disc_engine.backward(d_total)
            disc_engine.step()
            acc["adv_d"] = d_total.detach()
        last = step == cfg.train.steps - 1
        if step % cfg.run.log_every == 0 or last:
            names = sorted(acc)
            vals = torch.stack([acc[k].double().cpu() for k in names] + [torch.tensor(float(pixels), dtype=torch.float64)])
            if dims.world > 1:                            # means over ranks; pixels summed
                dist.all_reduce(vals)
                vals[:-1] /= dims.world
            parts = dict(zip(names, vals[:-1].tolist()))
            dt = time.perf_counter() - start
            skips = [None] * dims.world
            dist.all_gather_object(skips, stats.as_dict())
            skipped = {k: sum(d.get(k, 0) for d in skips) for d in skips for k in d}
            rec = {"step": step, "loss": parts["l1"] + parts["mse"], "mse": parts["mse"],
                   "psnr": 10 * math.log10(4.0 / max(parts["mse"], 1e-10)), "kl": parts["kl"],
                   "lr": sched.get_last_lr()[0], "grad_norm": float(engine.get_global_grad_norm() or 0.0),
                   "pixels": int(vals[-1]), "pixels_per_s": vals[-1].item() / dt, "step_time_s": dt,
                   "skipped": sum(skipped.values())}
            rec.update({k: v for k, v in parts.items() if k not in ("l1", "mse", "kl")})
            if disc_engine is not None:
                rec["adv_factor"] = adv
            rec.update({f"skipped_{k}": v for k, v in skipped.items()})
            if eval_set and ((cfg.vae.eval_every and step and step % cfg.vae.eval_every == 0) or last):
                rec.update(evaluate(engine.module, eval_set, dims.rank, dims.world, device, dtype, cfg.vae.chunk_frames))
            metrics.log(rec)
            bar.set_postfix(loss=f"{rec['loss']:.4f}", psnr=f"{rec['psnr']:.1f}")

    vae = engine.module
    vae.eval()
    if dims.is_main:
        mean, std = latent_stats(vae, stream)
        vae.latent_mean.copy_(mean)
        vae.latent_std.copy_(std)
        save_weights({k: v.float() for k, v in vae.state_dict().items()}, run_dir / "vae.safetensors")
        log.info("VAE saved to %s (latent mean %s, std %s)", run_dir / "vae.safetensors",
                 [round(v, 3) for v in mean.tolist()], [round(v, 3) for v in std.tolist()])
    metrics.close()
    dist.barrier()
    return run_dir
