"""Validation samples during `sora train`: every train.validate_every steps, the EMA weights sample
fixed prompts (train.validate_prompts) at fixed sizes with fixed noise, so runs and steps compare.

What a validation does, on every rank together (a validation is collective):
- gathers the EMA weights one parameter at a time (ZeRO-3 shards them) into a plain copy of the
  model, built empty on the meta device and filled in the training precision: the trained engine,
  its ZeRO-3 hooks and its sequence-parallel attention are not touched;
- splits the clips (prompt x size) over the ranks, each sampling its share with the copy
  (`sora.inference.VideoGenerator`, as `sora sample` does) and writing mp4 + gif under
  RUN_DIR/samples/stepN/ (N: the step's index, as in metrics.jsonl and the checkpoint tags);
- rank 0 adds every gif to TensorBoard (an animated image summary: what SummaryWriter.add_video
  writes, encoded by Pillow here since add_video needs moviepy) and writes stepN/index.json.

The training trajectory is untouched: every RNG (torch, CUDA, numpy, python) is restored after,
the noise generator and the loader are never used, and prompt i draws its noise from its own
generator seeded train.validate_seed + i. Each rank's share must finish within parallel.timeout_s
(the other ranks wait in a collective). Memory: one full copy of the weights per rank while it lasts.
"""
from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Callable

import deepspeed
import torch
import torch.distributed as dist

from sora.config import Config, ConfigError
from sora.data.video_io import write_video
from sora.inference import VideoGenerator
from sora.train import rng_state

log = logging.getLogger("sora.train")


def decoding_vae(cfg: Config, device, latent_shards: bool):
    """The VAE that decodes validation samples when training on latent shards (the raw path has its
    own): the one that made the shards (their manifest), else vae.pretrained, else vae.run. Raises
    ConfigError at start-up, naming what was looked for, when there is none."""
    from sora.data.latent_shards import read_manifest
    from sora.inference import load_decoder
    from sora.train.artifacts import check_vae_factors, check_vae_matches, run_config

    made_by = read_manifest(cfg.data.path).get("vae", {}) if latent_shards else {}
    pretrained = made_by.get("pretrained") or cfg.vae.pretrained
    run = made_by.get("run") or cfg.vae.run
    found = pretrained if pretrained and Path(pretrained).is_dir() else ""
    if not found and not (run and (Path(run) / "vae.safetensors").is_file()):
        tried = [f"'{p}'" for p in (pretrained, run) if p]
        raise ConfigError(f"config key 'train.validate_every': validation decodes its samples with a VAE, and none was "
                          f"found (looked in {' and '.join(tried) or 'nothing: no vae.pretrained or vae.run'}); "
                          "set vae.run or vae.pretrained, or train.validate_every=0")
    if not found:
        check_vae_matches(cfg, run_config(run))   # a stage-1 run: trained with the config's VAE settings
    vae = load_decoder(found, run, device)       # what `sora sample` decodes with
    check_vae_factors(cfg, vae, found or run)
    return vae


def _slug(prompt: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", prompt).strip("_")[:48] or "prompt"


class Validator:
    """`empty_model()`: the trained model's architecture on the meta device (no memory; what it does
    to the RNGs is undone with the rest), to receive the EMA weights; `vae`: decodes latents to pixels."""

    def __init__(self, cfg: Config, empty_model: Callable[[], torch.nn.Module], vae, device, dtype,
                 run_dir: Path, rank: int, world: int, untrained=()):
        self.cfg, self.empty_model, self.vae = cfg, empty_model, vae
        self.untrained = list(untrained)    # (name, parameter) the EMA does not track: LoRA's frozen base
        self.device, self.dtype, self.run_dir, self.rank, self.world = device, dtype, Path(run_dir), rank, world
        t = cfg.train
        self.clips = [(i, prompt, tuple(size)) for i, prompt in enumerate(t.validate_prompts)
                      for size in (t.validate_sizes or cfg.sample.sizes)]     # (prompt index, prompt, (T, H, W))

    def due(self, step: int) -> bool:
        """Like logging: every validate_every steps from step 0 (the start, as a baseline), and the last."""
        every = self.cfg.train.validate_every
        return every > 0 and (step % every == 0 or step == self.cfg.train.steps - 1)

    def __call__(self, step: int, ema, metrics) -> float | None:
        """Validate after `step` if it is due (a collective: every rank calls). -> seconds spent, or
        None when not due."""
        if not self.due(step):
            return None
        if self.device.type == "cuda":      # the step's queued work is the step's time, not validation's
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        saved = rng_state.capture({})
        try:
            mine = self.clips[self.rank::self.world]
            model = self._ema_model(ema, keep=bool(mine))
            written = self._sample(model, mine, step) if mine else []
            del model
            everyone = [None] * self.world
            dist.all_gather_object(everyone, written)
        finally:
            rng_state.restore(saved, {})
        if self.rank == 0:
            clips = sorted((c for part in everyone for c in part), key=lambda c: c["file"])
            self._publish(clips, step, metrics)
        seconds = time.perf_counter() - t0
        if self.rank == 0:
            log.info("validation at step %d: %d of %d clips in %.1f s -> %s", step, len(clips), len(self.clips),
                     seconds, self.run_dir / "samples" / f"step{step:08d}")
        return seconds

    @torch.no_grad()
    def _ema_model(self, ema, keep: bool) -> torch.nn.Module | None:
        """The EMA weights in a plain model on this rank's device (None when `keep` is False; the
        gather is collective, so every rank takes part)."""
        state = {name: w.to(self.device, self.dtype) for name, w in ema.gathered() if keep}
        for name, p in self.untrained:      # the frozen base as it is (a collective under ZeRO-3)
            with deepspeed.zero.GatheredParameters([p], enabled=hasattr(p, "ds_id")):
                if keep:
                    state[name] = p.data.detach().to(self.device, self.dtype).clone()
        if not keep:
            return None
        model = self.empty_model()
        model.load_state_dict(state, strict=True, assign=True)
        return model.requires_grad_(False).eval()

    def _sample(self, model, clips, step: int) -> list[dict]:
        """Sample, decode and write this rank's clips -> what rank 0 publishes of each."""
        gen = VideoGenerator(self.cfg, model, self.vae, self.device)
        t = self.cfg.train
        out = self.run_dir / "samples" / f"step{step:08d}"
        written = []
        for i, prompt, (frames, height, width) in clips:
            video = gen.generate([prompt], frames, height, width, steps=t.validate_steps or None,
                                 seed=t.validate_seed + i)[0]                      # [T, H, W, 3] uint8
            stem = out / f"{i:02d}-{_slug(prompt)}-{frames}x{height}x{width}"
            try:
                write_video(stem.with_suffix(".mp4"), video, fps=gen.playback_fps)
                write_video(stem.with_suffix(".gif"), video, fps=gen.playback_fps)
                gif = stem.with_suffix(".gif").read_bytes()
            except OSError as e:      # samples are a by-product: training goes on (a full disk stops it at the next save)
                log.warning("validation at step %d: could not write %s: %s", step, stem, e)
                continue
            written.append({"prompt": prompt, "size": [frames, height, width], "seed": t.validate_seed + i,
                            "file": stem.with_suffix(".mp4").name, "gif": gif})
        return written

    def _publish(self, clips: list[dict], step: int, metrics) -> None:
        """Rank 0: every clip's gif to TensorBoard, and stepN/index.json."""
        for c in clips:
            frames, height, width = c["size"]
            metrics.clip(f"validation/{Path(c['file']).stem}", c["gif"], height, width, step)
        out = self.run_dir / "samples" / f"step{step:08d}"
        try:
            out.mkdir(parents=True, exist_ok=True)
            (out / "index.json").write_text(json.dumps([{k: v for k, v in c.items() if k != "gif"} for c in clips],
                                                       indent=1))
        except OSError as e:
            log.warning("validation at step %d: could not write %s: %s", step, out / "index.json", e)
