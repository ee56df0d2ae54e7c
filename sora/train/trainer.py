"""Stage 2: train the text-conditioned DiT with flow matching on packed latents under DeepSpeed."""
from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from sora.config import Config, ConfigError, resolved_dims, save_config
from sora.data.loader import PackedLoader, VideoStream
from sora.data.shards import SkipStats, list_shards
from sora.diffusion.flow import add_noise, flow_loss_sum, sample_timesteps
from sora.models.t2v import TextToVideo
from sora.ops.packing_index import sample_index
from sora.parallel.deepspeed_config import deepspeed_config
from sora.parallel.dims import init_distributed
from sora.train.artifacts import check_vae_matches, load_vae, save_weights
from sora.train.checkpoint import gather_full_state, load_checkpoint, save_checkpoint
from sora.train.ema import ShardedEMA
from sora.train.flops import peak_flops, train_flops
from sora.train.metrics import MetricsLogger
from sora.train.schedule import warmup_cosine

log = logging.getLogger("sora.train")
warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")


def build_engine(cfg: Config, model: torch.nn.Module, bf16: bool):
    import deepspeed

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps,
                            weight_decay=cfg.optim.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, cfg.optim.warmup, cfg.train.steps, cfg.optim.min_lr_ratio))
    engine, _, _, sched = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched,
                                               config=deepspeed_config(cfg, bf16))
    return engine, sched


def draw_noise(batch, gen: torch.Generator, cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample times t [B] and noise [N, P] for one packed batch (drawn on the CPU: reproducible)."""
    lens = (batch.cu_seqlens[1:] - batch.cu_seqlens[:-1]).long().cpu()
    t = sample_timesteps(lens, cfg.diffusion, gen)
    noise = torch.randn(tuple(batch.x.shape), generator=gen)
    return t.to(batch.x.device), noise.to(batch.x.device, batch.x.dtype)


def flow_matching_loss(engine, batch, t, noise, dp_group=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss to backpropagate, plus the group's token-weighted mean loss and token count (0-d tensors
    on the device: reading them is a host sync, so the caller does it only on logged steps).

    The objective is the mean over every real token of the whole data-parallel group: each rank
    divides its token-sum by the group's token count and multiplies by dp, because DeepSpeed
    averages gradients over ranks. So 2 ranks equal 1 rank processing both packs.
    """
    x0, cu = batch.x, batch.cu_seqlens
    xt = add_noise(x0, noise, t[sample_index(cu, x0.shape[0])])
    pred = engine(xt, cu, batch.max_seqlen, batch.grid, t.to(x0.dtype), batch.captions)
    loss_sum = flow_loss_sum(pred, x0, noise)
    stats = torch.stack([loss_sum.detach().double(), loss_sum.new_tensor(x0.shape[0], dtype=torch.float64)])
    dp = 1
    if dist.is_initialized():
        dist.all_reduce(stats, group=dp_group)
        dp = dist.get_world_size(dp_group)
    return loss_sum * (dp / stats[1]).to(loss_sum.dtype), stats[0] / stats[1], stats[1]


def train_dit(cfg: Config) -> Path:
    dims = init_distributed(cfg.parallel.sp)
    if dims.sp > 1:
        raise ConfigError("config key 'parallel.sp': sequence parallelism (sp > 1) is not in this build yet")
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and cuda)
    dtype = torch.bfloat16 if bf16 else torch.float32
    run_dir = Path(cfg.run.dir)
    vae, vae_cfg = load_vae(cfg.vae.run, device)
    check_vae_matches(cfg, vae_cfg)
    if dims.is_main:
        save_config(cfg, run_dir / "config.yaml")

    torch.manual_seed(cfg.run.seed)  # identical init on every rank
    model = TextToVideo(cfg)
    engine, sched = build_engine(cfg, model, bf16)
    ema = ShardedEMA(engine.module.named_parameters(), cfg.train.ema)
    ckpt_dir = run_dir / "checkpoints"
    start = load_checkpoint(engine, ema, ckpt_dir)
    if start and dims.is_main:
        log.info("resumed from %s at step %d", ckpt_dir, start)

    stats = SkipStats()
    videos = VideoStream(list_shards(cfg.data.path, cfg.data.split), cfg.data, cfg.vae.ft, cfg.vae.fh,
                         cfg.model.patch, dims.dp_rank, dims.dp, cfg.run.seed, stats)

    @torch.no_grad()
    def encode(video):                                              # [3, T, H, W] -> [C, T', H', W']
        return vae.encode(video[None].to(device))[0].float().cpu()

    loader = iter(PackedLoader(videos, encode, cfg.model.patch, cfg.data.tokens_per_batch,
                               cfg.data.caption_dropout, cfg.run.seed))
    gen = torch.Generator().manual_seed(cfg.run.seed * 1000 + dims.dp_rank + 1)
    depth, width, _ = resolved_dims(cfg.model)
    in_dim = cfg.vae.latent_channels * cfg.model.patch[0] * cfg.model.patch[1] * cfg.model.patch[2]
    text_dim = engine.module.dit.text_pool[0].normalized_shape[0]
    peak, peak_source = peak_flops(str(device))
    metrics = MetricsLogger(run_dir, enabled=dims.is_main)
    if dims.is_main:
        log.info("DiT %s: depth %d width %d, %d ranks (dp %d), MFU peak: %s %.3g FLOP/s",
                 cfg.model.size, depth, width, dims.world, dims.dp, peak_source, peak)
    bar = tqdm(range(start, cfg.train.steps), desc="dit", disable=not dims.is_main, dynamic_ncols=True,
               initial=start, total=cfg.train.steps)
    engine.train()
    for step in bar:
        t0 = time.perf_counter()
        batch = next(loader).to(device, dtype)
        t, noise = draw_noise(batch, gen, cfg)
        objective, loss, tokens = flow_matching_loss(engine, batch, t, noise)
        engine.backward(objective)
        engine.step()
        ema.update(step)
        if step % cfg.run.log_every == 0 or step == cfg.train.steps - 1:
            loss, tokens = loss.item(), int(tokens.item())   # read back only on logged steps, before timing
            dt = time.perf_counter() - t0
            seqlens = (batch.cu_seqlens[1:] - batch.cu_seqlens[:-1]).tolist()
            ctx_lens = [1 + len(c.split()) for c in batch.captions]
            flops = torch.tensor(float(train_flops(depth, width, in_dim, text_dim, cfg.model.mlp_ratio, seqlens, ctx_lens)))
            eff = torch.tensor(batch.efficiency)
            dist.all_reduce(flops)
            dist.all_reduce(eff)
            skips = [None] * dims.world  # each data-parallel rank reads its own shards: sum their skips
            dist.all_gather_object(skips, stats.as_dict())
            skipped = {k: sum(d.get(k, 0) for d in skips) // dims.sp for d in skips for k in d}
            rec = {"step": step, "loss": loss, "lr": sched.get_last_lr()[0],
                   "grad_norm": float(engine.get_global_grad_norm() or 0.0), "tokens": tokens,
                   "tokens_per_s": tokens / dt, "mfu": float(flops) / dt / (peak * dims.world),
                   "packing_efficiency": float(eff) / dims.world, "samples": batch.num_samples,
                   "step_time_s": dt, "skipped": sum(skipped.values())}
            rec.update({f"skipped_{k}": v for k, v in skipped.items()})
            metrics.log(rec)
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{rec['tokens_per_s']:.0f}")
        if cfg.run.save_every and (step + 1) % cfg.run.save_every == 0 and step + 1 < cfg.train.steps:
            save_checkpoint(engine, ema, ckpt_dir, step, cfg.run.keep_checkpoints)

    save_checkpoint(engine, ema, ckpt_dir, cfg.train.steps - 1, cfg.run.keep_checkpoints)
    weights = gather_full_state(engine.module)
    ema_weights = ema.full_state()
    if dims.is_main:
        save_weights(weights, run_dir / "final" / "model.safetensors")
        save_weights(ema_weights, run_dir / "final" / "ema.safetensors")
        log.info("final weights in %s", run_dir / "final")
    metrics.close()
    dist.barrier()
    return run_dir
