"""Stage 1: train the causal VAE on raw clips of mixed sizes (one process; clips of different
shapes are run one by one and their gradients accumulated into one step)."""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
from tqdm import tqdm

from sora.config import Config, save_config
from sora.data.loader import VideoStream
from sora.data.shards import SkipStats, list_shards
from sora.train.artifacts import build_vae, save_weights
from sora.train.metrics import MetricsLogger
from sora.train.schedule import warmup_cosine

log = logging.getLogger("sora.train")


def vae_loss(vae, video: torch.Tensor, kl_weight: float) -> tuple[torch.Tensor, dict]:
    """video [3, T, H, W] -> loss (L1 + L2 reconstruction + weighted KL), parts for logging."""
    x = video[None]
    mean, logvar = vae.encode_dist(x)
    z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
    rec = vae.decode_unscaled(z)
    l1 = (rec - x).abs().mean()
    l2 = (rec - x).pow(2).mean()
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean()
    return l1 + l2 + kl_weight * kl, {"l1": l1.item(), "mse": l2.item(), "kl": kl.item()}


def psnr(mse: float) -> float:
    return 10 * math.log10(4.0 / max(mse, 1e-10))  # signal range [-1, 1] -> peak-to-peak 2


@torch.no_grad()
def latent_stats(vae, videos, n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of latent means over n clips, so the DiT sees ~N(0, 1) latents."""
    zs = torch.cat([vae.encode_dist(v[None])[0].transpose(0, 1).flatten(1) for _, v, _ in _take(videos, n)], 1)
    return zs.mean(1), zs.std(1).clamp(min=1e-4)


def _take(it, n):
    out = []
    for item in it:
        out.append(item)
        if len(out) >= n:
            break
    return out


def train_vae(cfg: Config) -> Path:
    torch.manual_seed(cfg.run.seed)
    run_dir = Path(cfg.run.dir)
    save_config(cfg, run_dir / "config.yaml")
    vae = build_vae(cfg)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps,
                            weight_decay=cfg.optim.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, cfg.optim.warmup, cfg.train.steps, cfg.optim.min_lr_ratio))
    stats = SkipStats()
    patch = (1, 1, 1)  # stage 1 only needs the VAE factors
    videos = VideoStream(list_shards(cfg.data.path, cfg.data.split), cfg.data, cfg.vae.ft, cfg.vae.fh, patch,
                         seed=cfg.run.seed, stats=stats)
    stream = iter(videos)
    metrics = MetricsLogger(run_dir, enabled=True)
    pixel_budget = cfg.data.tokens_per_batch * cfg.vae.fh * cfg.vae.fh * cfg.vae.ft  # same budget idea, in pixels
    bar = tqdm(range(cfg.train.steps), desc="vae", dynamic_ncols=True)
    for step in bar:
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        clips, pixels, parts = [], 0, []
        while not clips or pixels < pixel_budget:
            key, video, _ = next(stream)
            clips.append(video)
            pixels += video[0].numel()
        for video in clips:  # pixel-weighted mean over the step's clips
            loss, p = vae_loss(vae, video, cfg.vae.kl_weight)
            (loss * video[0].numel() / pixels).backward()
            parts.append((video[0].numel() / pixels, p))
        grad_norm = torch.nn.utils.clip_grad_norm_(vae.parameters(), cfg.optim.grad_clip)
        opt.step()
        sched.step()
        mse = sum(w * p["mse"] for w, p in parts)
        if step % cfg.run.log_every == 0 or step == cfg.train.steps - 1:
            rec = {"step": step, "loss": sum(w * (p["l1"] + p["mse"]) for w, p in parts), "mse": mse,
                   "psnr": psnr(mse), "kl": sum(w * p["kl"] for w, p in parts), "lr": sched.get_last_lr()[0],
                   "grad_norm": float(grad_norm), "pixels": pixels,
                   "pixels_per_s": pixels / (time.perf_counter() - start), "skipped": stats.total}
            rec.update({f"skipped_{k}": v for k, v in stats.as_dict().items()})
            metrics.log(rec)
            bar.set_postfix(loss=f"{rec['loss']:.4f}", psnr=f"{rec['psnr']:.1f}")
    vae.eval()
    mean, std = latent_stats(vae, stream)
    vae.latent_mean.copy_(mean)
    vae.latent_std.copy_(std)
    save_weights(vae.state_dict(), run_dir / "vae.safetensors")
    metrics.close()
    log.info("VAE saved to %s (latent mean %s, std %s)", run_dir / "vae.safetensors",
             [round(v, 3) for v in mean.tolist()], [round(v, 3) for v in std.tolist()])
    return run_dir
