"""One training process's plumbing, shared by `sora train` (the DiT) and `sora train-vae` (the VAE).

A TrainSession owns what is not specific to a model: the process group, device and precision; the
run directory (probed before any step); DeepSpeed engines; checkpoints with the `newest` pointer,
holding every engine, the EMA, every RNG and the loader's position, each checked for free space
before any rank writes; the metrics record with data skips summed over ranks; preemption
(SIGTERM/SIGUSR1 -> checkpoint -> exit 75); how each start ended (exit_status.json); the export of
the final weights. A trainer keeps its model, its data and its step:

    session = TrainSession(cfg, "vae", preempt)
    engine, sched = session.build_engine(model)
    start, position = session.resume(Checkpointed({"vae": engine}, {}, "clips_taken", lambda: n))
    ...                                   # move the loader to `position`
    with session:                         # a Stopped exception is recorded in exit_status.json
        for step in session.steps(start):     # checks preemption and saves after each step
            ...                               # the trainer's step
            session.log(record, stats)        # on logged steps (a collective)
        return session.finish(export)
"""
from __future__ import annotations

import json
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.distributed as dist
from tqdm import tqdm

from sora.config import Config, save_config, uses_bf16
from sora.data.shards import SkipStats
from sora.parallel.dims import compute_device, init_distributed
from sora.train import rng_state, storage
from sora.train.checkpoint import load_checkpoint, save_checkpoint, step_tag
from sora.train.engine import build_engine
from sora.train.faults import Preempted, PreemptionFlag, Stopped, StorageError
from sora.train.metrics import MetricsLogger

log = logging.getLogger("sora.train")


@dataclass
class Checkpointed:
    """What a checkpoint holds besides the step."""
    engines: dict                             # name -> DeepSpeed engine; the first is the trained model
    generators: dict[str, torch.Generator]    # besides torch's, numpy's and python's global RNGs
    position_key: str                         # what the loader's position counts, e.g. "packs_taken"
    position: Callable[[], int]               # the loader's place in its seeded stream
    ema: object | None = None                 # sora.train.ema.ShardedEMA


class TrainSession:
    def __init__(self, cfg: Config, name: str, preempt: PreemptionFlag | None = None, sp: int = 1):
        """`preempt`: a flag installed early by the command line (a signal during start-up must
        not kill the process before its first checkpoint); None installs one here."""
        self.cfg, self.name = cfg, name
        self.own_flag = preempt is None
        self.preempt = preempt or PreemptionFlag()
        self.dims = init_distributed(sp, cfg.parallel.timeout_s)
        self.device = compute_device()
        self.bf16 = uses_bf16(cfg.train.precision, self.device.type)
        self.dtype = torch.bfloat16 if self.bf16 else torch.float32
        self.run_dir = Path(cfg.run.dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        problem = storage.agree(storage.writable_problem(self.run_dir, self.dims.rank))
        if problem:
            raise StorageError(problem)
        self.state: Checkpointed | None = None
        self.metrics: MetricsLogger | None = None
        self.bar = None

    def build_engine(self, module: torch.nn.Module, mpu=None, whole_params: bool = False):
        return build_engine(self.cfg, module, self.bf16, mpu, whole_params)

    def resume(self, state: Checkpointed) -> tuple[int, int]:
        """Load the newest complete checkpoint into `state` (engines, EMA, RNGs), if any, and open
        the metrics from there. -> (first step to run, the loader position to move to)."""
        self.state = state
        if self.dims.is_main:
            save_config(self.cfg, self.run_dir / "config.yaml")
        start, saved = load_checkpoint(state.engines, state.ema, self.ckpt_dir)
        position = 0
        if start:
            if saved is None:
                raise RuntimeError(f"checkpoint in {self.ckpt_dir} has no RNG/loader state for rank {self.dims.rank}")
            rng_state.restore(saved["rng"], state.generators)
            position = saved[state.position_key]
            if self.dims.is_main:
                log.info("resumed from %s at step %d (%s %d)", self.ckpt_dir, start, state.position_key, position)
        self.metrics = MetricsLogger(self.run_dir, enabled=self.dims.is_main, start_step=start)
        return start, position

    def checkpoint(self, step: int) -> None:
        """Save on every rank, after every rank found room for it."""
        s = self.state
        problem = storage.agree(storage.checkpoint_space_problem(self.ckpt_dir, s.engines, s.ema))
        if problem:
            raise StorageError(problem)
        try:
            save_checkpoint(s.engines, s.ema, self.ckpt_dir, step, self.cfg.run.keep_checkpoints,
                            {"rng": rng_state.capture(s.generators), s.position_key: s.position()})
        except (OSError, RuntimeError) as e:   # a full disk surfaces as either, through torch.save
            raise StorageError(storage.save_failed(self.ckpt_dir, step_tag(step), e)) from e

    def steps(self, start: int) -> Iterator[int]:
        """Steps start..train.steps-1; after each: agree on preemption (checkpoint, raise
        Preempted), save every run.save_every steps; a checkpoint after the last."""
        total, every = self.cfg.train.steps, self.cfg.run.save_every
        self.bar = tqdm(range(start, total), desc=self.name, disable=not self.dims.is_main, dynamic_ncols=True,
                        initial=start, total=total)
        for step in self.bar:
            yield step
            if self.preempt.agreed(self.device):
                self.checkpoint(step)
                signame = signal.Signals(self.preempt.received).name if self.preempt.received else "a peer's signal"
                raise Preempted(f"checkpointed step {step} after {signame}; resume by rerunning the same command")
            if every and (step + 1) % every == 0 and step + 1 < total:
                self.checkpoint(step)
        if start < total:
            self.checkpoint(total - 1)

    def log(self, record: dict, stats: SkipStats) -> None:
        """Add the data skips of every data-parallel rank to `record` and write it (rank 0). A
        collective: call it on every rank."""
        skips = [None] * self.dims.world      # each data-parallel rank reads its own shards: sum them
        dist.all_gather_object(skips, stats.as_dict())
        summed = {k: sum(d.get(k, 0) for d in skips) // self.dims.sp for d in skips for k in d}
        record["skipped"] = sum(summed.values())
        record.update({f"skipped_{k}": v for k, v in summed.items()})
        self.metrics.log(record)

    def finish(self, export: Callable[[], None]) -> Path:
        """Run `export` (the final weights; called on every rank), record the run as finished."""
        try:
            export()
        except OSError as e:
            raise StorageError(f"writing the final weights in '{self.run_dir}' failed: {e}") from e
        self._record_exit(0, "finished")
        dist.barrier()
        return self.run_dir

    def __enter__(self) -> "TrainSession":
        return self

    def __exit__(self, kind, error, tb) -> None:
        if isinstance(error, Stopped):
            self._record_exit(error.exit_code, str(error))
        if self.metrics is not None:
            self.metrics.close()
        if self.own_flag:
            self.preempt.restore()

    def _record_exit(self, code: int, message: str) -> None:
        """RUN_DIR/exit_status.json: how the last start ended, for launchers that cannot see our exit
        code through torchrun (which reports any worker failure as its own code 1)."""
        if not self.dims.is_main:
            return
        tmp = self.run_dir / "exit_status.json.tmp"
        try:
            tmp.write_text(json.dumps({"code": code, "message": message, "time": time.time()}))
            tmp.replace(self.run_dir / "exit_status.json")
        except OSError as e:    # the disk that stopped the run may not take this either
            tmp.unlink(missing_ok=True)
            log.warning("could not write %s: %s", self.run_dir / "exit_status.json", e)
