"""What the VAE trainer measures besides its losses: PSNR / SSIM on held-out clips, and the
per-channel latent statistics stored with the final weights."""
from __future__ import annotations

import torch
import torch.distributed as dist

from sora.config import Config
from sora.data.pipeline import VideoStream
from sora.data.shards import SkipStats, list_shards
from sora.shapes import ShapeRules
from sora.train.vae_losses import psnr, ssim


@torch.no_grad()
def latent_stats(vae, videos, n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of latent means over n clips, so the DiT sees ~N(0, 1) latents."""
    p = next(vae.parameters())
    zs = torch.cat([vae.encode_dist(s.data[None].to(p.device, p.dtype))[0].float().transpose(0, 1).flatten(1)
                    for s in _take(videos, n)], 1)
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
    for s in VideoStream(paths, cfg.data, ShapeRules(cfg.vae.ft, cfg.vae.fh), stats=stats).samples():
        clips.append((s.key, s.data))
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
