"""Stage 2: train the text-conditioned DiT with flow matching on packed latents under DeepSpeed.

The DiT's own step lives here, in one place: `draw_noise` (times, noise, given tokens),
`step_input` (this rank's share of the pack), `flow_matching_loss` (the model call and the loss).
`train_dit` is the loop around it; engines, checkpoints, resume, preemption, metrics and the
final export are the shared plumbing of `sora.train.session`.
"""
from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from sora.config import Config
from sora.data.latent_shards import cached_text, latent_stream, uses_latent_shards
from sora.data.loader import PackedLoader
from sora.data.packing import PackedText
from sora.data.pipeline import VideoStream
from sora.data.shards import SkipStats, list_shards
from sora.diffusion.flow import add_noise, first_frame_tokens, flow_loss_sum, sample_timesteps
from sora.models.lora import trained_parameters
from sora.models.t2v import TextToVideo, initial_model
from sora.models.text import FrozenTextEncoder
from sora.ops import PackedLayout
from sora.ops.patchify import unpatchify_packed_torch
from sora.parallel.dims import ParallelDims
from sora.parallel.sequence import padded_packing, shard_layout, shard_rows
from sora.parallel.ulysses import init_sequence_parallel_groups, pack_checksum, wrap_for_sequence_parallel
from sora.shapes import ShapeRules
from sora.train.artifacts import check_vae_matches, load_vae, save_final
from sora.train.checkpoint import gather_full_state, newest_tag
from sora.train.ema import ShardedEMA
from sora.train.engine import grad_norm
from sora.train.faults import NonFiniteGuard, PreemptionFlag, injected_nan_steps
from sora.train.flops import DiTShape, peak_flops, step_flops
from sora.train.session import Checkpointed, TrainSession
from sora.train.validation import Validator, decoding_vae

log = logging.getLogger("sora.train")
warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")


def draw_noise(batch, gen: torch.Generator, cfg: Config) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample times t [B], noise [N*P] (packed like the latents) and given [N] (tokens kept
    clean: first frames of the samples drawn for image-to-video) for one packed batch. Drawn on the
    CPU: reproducible, and identical on every rank of a sequence-parallel group, which share the
    generator seed. Noise is drawn per token [N, P] and laid out as latents (a permutation)."""
    lens = (batch.cu_seqlens[1:] - batch.cu_seqlens[:-1]).long().cpu()
    cu, grid = batch.cu_seqlens.cpu(), batch.grid.cpu()
    t = sample_timesteps(lens, cfg.diffusion, gen)
    noise = torch.randn((batch.num_tokens, batch.values_per_token), generator=gen)
    noise = unpatchify_packed_torch(noise, cu, grid, cfg.model.patch, cfg.vae.latent_channels)
    given = torch.zeros(batch.num_tokens, dtype=torch.bool)
    if cfg.diffusion.first_frame_prob > 0:   # drawn only then: other configs keep their random stream
        chosen = torch.rand(lens.shape, generator=gen) < cfg.diffusion.first_frame_prob   # [B]
        given = first_frame_tokens(cu, grid, chosen)
    dev = batch.latents.device
    return t.to(dev), noise.to(dev, batch.latents.dtype), given.to(dev)


@dataclass
class StepInput:
    """What this rank feeds the model and scores: the whole pack's latents (every rank of a
    sequence-parallel group holds them) and the layout of the tokens this rank computes."""
    x0: torch.Tensor             # [N*P] clean latents of the pack
    xt: torch.Tensor             # [N*P] noised (given tokens' values clean)
    noise: torch.Tensor          # [N*P]
    layout: PackedLayout         # the whole pack (sp = 1) or this rank's slice of it
    t: torch.Tensor              # [S] per segment
    text: list[str] | PackedText  # per segment: its caption, or the caption's cached encoder rows
    given: torch.Tensor          # [L] bool tokens kept clean (conditioning, not in the loss)
    weight: torch.Tensor         # [N*P] 1 on the values this rank scores: its real tokens, not given
    real: int                    # real tokens of the pack (the pad excluded)


def step_input(batch, t, noise, given, cfg: Config, kernels, dims: ParallelDims) -> StepInput:
    """Lay out one pack for this rank: the layouts, per-segment times and text, the noised
    latents, and the loss weights."""
    patch, channels = cfg.model.patch, cfg.vae.latent_channels
    pack = kernels.layout(batch.cu_seqlens, batch.grid)                          # whole samples
    p = batch.values_per_token
    per_value = (lambda tok: kernels.unpatchify(tok[:, None].expand(-1, p).contiguous(), pack, patch, channels))
    given_f = given.to(batch.latents.dtype)
    t_values = per_value(t[pack.sample_index].to(batch.latents.dtype))           # [N*P]
    xt = torch.where(per_value(given_f) > 0, batch.latents, add_noise(batch.latents, noise, t_values))
    scored = 1 - given_f                                                         # [N]
    if dims.sp == 1:
        text = batch.captions if batch.text is None else batch.text
        return StepInput(batch.latents, xt, noise, pack, t, text, given, per_value(scored), batch.num_tokens)
    layout = shard_layout(kernels.layout(*padded_packing(batch.cu_seqlens, batch.grid, dims.sp)), dims.sp,
                          dims.sp_rank)
    lo, hi = layout.rows
    mine = torch.zeros_like(scored)
    mine[lo:hi] = 1                                                              # rows past the pack are pad
    seg = layout.whole.sample_index[lo + layout.cu_seqlens[:-1].long()]          # [S] sample of each segment
    t_all = torch.cat([t, t.new_zeros(1)])                                       # the pad's time is irrelevant
    if batch.text is not None:                     # the pad's caption too: it takes the last sample's rows
        text = batch.text.select([min(i, batch.num_samples - 1) for i in seg.tolist()])
    else:
        text = [(batch.captions + [""])[i] for i in seg.tolist()]
    return StepInput(batch.latents, xt, noise, layout, t_all[seg], text,
                     shard_rows(given, layout), per_value(scored * mine), batch.num_tokens)


def flow_matching_loss(engine, inp: StepInput, values_per_token: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss to backpropagate, plus the token-weighted mean loss over every rank and the real token
    count (0-d tensors on the device: reading them is a host sync, so only logged steps do).

    The objective is the mean over every scored token of every pack of the step. Each rank divides
    its token-sum by the world's token count and multiplies by the world size, because ZeRO-3's
    reduce-scatter (`reduce_scatter: true`, set in deepspeed_config) averages gradients over all
    ranks, sequence-parallel ones included (DeepSpeed 0.19.8's other path, reduce_scatter off,
    divides by world / sp instead: the config pins the path). So 2 data-parallel ranks equal 1 rank
    processing both packs, and sp ranks equal 1 rank holding the whole pack. Each sp rank scores
    only its own tokens and counts its share of the pack's real tokens.
    """
    pred = engine(inp.xt, inp.layout, inp.t.to(inp.x0.dtype), inp.text, inp.given)   # [N*P]
    loss_sum = flow_loss_sum(pred, inp.x0, inp.noise, inp.weight, values_per_token)
    lo, hi = inp.layout.rows or (0, inp.real)
    real = max(0, min(hi, inp.real) - lo)
    stats = torch.stack([loss_sum.detach().double(), inp.weight.double().sum() / values_per_token,
                         loss_sum.new_tensor(real, dtype=torch.float64)])
    world = 1
    if dist.is_initialized():
        dist.all_reduce(stats)
        world = dist.get_world_size()
    return loss_sum * (world / stats[1]).to(loss_sum.dtype), stats[0] / stats[1], stats[2]


def check_identical_packs(batch, group) -> None:
    """Debug (parallel.check_packs): every rank of a sequence-parallel group must hold the same pack."""
    mine = pack_checksum(batch.latents, batch.cu_seqlens)
    theirs = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(theirs, mine, group=group)
    if any(not torch.equal(mine, o) for o in theirs):
        raise RuntimeError(f"rank {dist.get_rank()}: the ranks of a sequence-parallel group got different packs "
                           f"(checksums {[o.tolist() for o in theirs]})")


def model_flops(shape: DiTShape, model: TextToVideo, batch) -> int:
    """Model FLOPs (forward + backward, no recomputation: the MFU numerator) of one step on the
    whole pack, counting each caption as the rows the DiT attends to."""
    seqlens = (batch.cu_seqlens[1:] - batch.cu_seqlens[:-1]).tolist()
    text = getattr(batch, "text", None)
    return step_flops(shape, seqlens, model.text_lengths(text if text is not None else batch.captions)).model


def train_dit(cfg: Config, preempt: PreemptionFlag | None = None) -> Path:
    """Train, checkpointing every run.save_every steps; resumes from the newest checkpoint in
    run.dir. Raises faults.Preempted after checkpointing on SIGTERM/SIGUSR1, faults.Diverged after
    train.max_nonfinite_steps non-finite steps in a row, faults.StorageError when a checkpoint
    does not fit or the run directory cannot be written."""
    session = TrainSession(cfg, "dit", preempt, sp=cfg.parallel.sp)
    dims, device, dtype = session.dims, session.device, session.dtype
    latent = uses_latent_shards(cfg)      # `sora preprocess` output: no VAE here, no online encoding
    cached = cached_text(cfg, latent)     # the captions' encoder rows from the shards: no text encoder here
    if not latent:
        vae, vae_cfg = load_vae(cfg.vae.run, device)
        check_vae_matches(cfg, vae_cfg)
    if cfg.train.validate_every:   # found now, not at the first validation
        validation_vae = decoding_vae(cfg, device, latent) if latent else vae

    # Identical on every rank: the seed's init, model.pretrained's weights (not on a full fine-tune's
    # resume: the checkpoint holds them all; a LoRA checkpoint holds only the adapters), then LoRA.
    resuming = newest_tag(session.ckpt_dir) is not None
    model = initial_model(cfg, device.type, load_pretrained=not (resuming and not cfg.lora.rank),
                          text_dim=cached.dim if cached else None)
    mpu = init_sequence_parallel_groups(dims.sp) if dims.sp > 1 else None
    engine, sched = session.build_engine(model, mpu)
    if mpu:
        wrap_for_sequence_parallel(engine.module.dit, mpu.get_sequence_parallel_group())
    ema = ShardedEMA(trained_parameters(engine.module), cfg.train.ema)
    validator = None
    if cfg.train.validate_every:
        # The sampling copy encodes the prompts itself: with the trained model's frozen encoder, or
        # (cached features: none in the trainer) the config's text.path, loaded for validation only.
        frozen = (model._frozen_text or [None])[0]
        if frozen is None and cfg.text.encoder != "hash":
            frozen = FrozenTextEncoder(cfg.text.path, cfg.text.max_tokens)

        def empty_model():        # the EMA's copy for sampling, the run's structure (LoRA too): no memory
            with torch.device("meta"):   # until filled; its seeding is undone by the Validator's RNG restore
                return initial_model(cfg, device.type, load_pretrained=False, frozen_text=frozen)

        untrained = [(n, p) for n, p in engine.module.named_parameters() if not p.requires_grad]   # LoRA's base
        validator = Validator(cfg, empty_model, validation_vae, device, dtype, session.run_dir, dims.rank, dims.world,
                              untrained)

    stats = SkipStats()
    videos = VideoStream(list_shards(cfg.data.path, cfg.data.split), cfg.data, ShapeRules.of(cfg), dims.dp_rank,
                         dims.dp, cfg.run.seed, stats)

    @torch.no_grad()
    def encode(video):                                              # [3, T, H, W] -> [C, T', H', W']
        return vae.encode(video[None].to(device))[0].float().cpu()

    videos, encode, latent_shape = latent_stream(cfg, dims.dp_rank, dims.dp, stats, bool(cached)) if latent else (
        videos, encode, vae.latent_shape)
    loader = PackedLoader(videos, encode, cfg.model.patch, cfg.data.tokens_per_batch, cfg.data.caption_dropout,
                          cfg.run.seed, latent_shape=latent_shape, empty_text=cached.empty if cached else None)
    gen = torch.Generator().manual_seed(cfg.run.seed * 1000 + dims.dp_rank + 1)
    start, packs_taken = session.resume(Checkpointed({"model": engine}, {"noise": gen}, "packs_taken",
                                                     lambda: loader.packs_taken, ema))
    loader.skip(packs_taken if start < cfg.train.steps else 0)   # a finished run only re-exports

    shape = dataclasses.replace(DiTShape.from_config(cfg), text_dim=model.dit.text_dim)
    peak, peak_source = peak_flops(str(device))
    if dims.is_main:
        log.info("DiT %s: depth %d width %d, %d ranks (dp %d x sp %d), MFU peak: %s %.3g FLOP/s",
                 cfg.model.pretrained or cfg.model.size, shape.depth, shape.width, dims.world, dims.dp, dims.sp, peak_source, peak)
    guard = NonFiniteGuard(cfg.train.max_nonfinite_steps)
    nan_steps = injected_nan_steps()
    engine.train()
    with session:
        for step in session.steps(start):
            t0 = time.perf_counter()
            batch = next(loader).to(device, dtype)
            if cfg.parallel.check_packs and mpu:
                check_identical_packs(batch, mpu.get_sequence_parallel_group())
            t, noise, given = draw_noise(batch, gen, cfg)
            inp = step_input(batch, t, noise, given, cfg, engine.module.dit.kernels, dims)
            objective, loss, tokens = flow_matching_loss(engine, inp, batch.values_per_token)
            if step in nan_steps:
                objective = objective * float("nan")
            engine.backward(objective)
            engine.step()
            skipped = guard.after_step(engine.was_step_applied(), step)
            if not skipped:
                ema.update(step)
            validation_s = validator(step, ema, session.metrics) if validator else None   # logged, not timed
            if step % cfg.run.log_every == 0 or step == cfg.train.steps - 1 or skipped or validation_s is not None:
                loss, tokens = loss.item(), int(tokens.item())   # read back only on logged steps, before timing
                norm = grad_norm(engine)
                dt = time.perf_counter() - t0 - (validation_s or 0.0)
                flops = torch.tensor(float(model_flops(shape, engine.module, batch)),
                                     device=device)   # on the device: NCCL reduces there
                eff = torch.tensor(batch.efficiency, device=device)
                dist.all_reduce(flops)   # each pack is counted by its sp ranks: divide by sp
                dist.all_reduce(eff)
                session.log({"step": step, "loss": loss, "lr": sched.get_last_lr()[0], "grad_norm": norm,
                             "tokens": tokens, "tokens_per_s": tokens / dt,
                             "mfu": float(flops) / dims.sp / dt / (peak * dims.world),
                             "packing_efficiency": float(eff) / dims.world, "samples": batch.num_samples,
                             "step_time_s": dt, "nonfinite_skipped": guard.total,
                             **({} if validation_s is None else {"validation_s": validation_s})}, stats)
                session.bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens / dt:.0f}")
            guard.check(step)

        def export() -> None:
            adapters_only = cfg.lora.rank and not cfg.lora.save_merged
            weights = gather_full_state(engine.module, trained_parameters(engine.module) if adapters_only
                                        else None)   # collectives: every rank
            ema_weights = ema.full_state()
            if dims.is_main:
                save_final(cfg, session.run_dir / "final", weights, ema_weights)
                log.info("final weights in %s", session.run_dir / "final")

        return session.finish(export)
