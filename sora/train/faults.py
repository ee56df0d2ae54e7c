"""Surviving faults: preemption signals, non-finite steps, storage that cannot take a save.

SIGTERM / SIGUSR1 (Slurm sends one before a time limit or preemption) only set a flag; the
training loop checks it at a step boundary, all ranks agree through one all-reduce, checkpoint
together and exit with `exit_codes.PREEMPTED`. A signal handler never does collective work itself.
Each way a run stops on purpose is a `Stopped` exception carrying its exit code.
"""
from __future__ import annotations

import logging
import os
import signal

from sora.train import exit_codes   # no torch at import: `sora train` installs the handler first thing

log = logging.getLogger("sora.train")


class Stopped(Exception):
    """Training stopped on purpose; the process exits with `exit_code` (`what` names the reason)."""
    exit_code = 1
    what = "stopped"


class Preempted(Stopped):
    """Checkpointed after SIGTERM/SIGUSR1; the process should exit with exit_codes.PREEMPTED."""
    exit_code = exit_codes.PREEMPTED
    what = "preempted"


class Diverged(Stopped):
    """Too many non-finite steps in a row; the last good checkpoint is kept."""
    exit_code = exit_codes.DIVERGED
    what = "diverged"


class StorageError(Stopped):
    """The run directory cannot be written, or a checkpoint would not fit / failed to write; the
    message names the path, the space needed and the last complete checkpoint."""
    exit_code = exit_codes.STORAGE
    what = "storage error"


class PreemptionFlag:
    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.received: int | None = None
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def agreed(self, device="cpu") -> bool:
        """True on every rank if any rank got a signal (a collective: call it on all ranks; `device`
        is where the backend reduces: the GPU under NCCL)."""
        import torch
        import torch.distributed as dist

        flag = torch.tensor([0 if self.received is None else 1], dtype=torch.int32, device=device)
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def restore(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)


class NonFiniteGuard:
    """Counts steps DeepSpeed skipped for a non-finite gradient norm (a non-finite loss makes
    non-finite gradients); `max_in_a_row` consecutive ones stop training."""

    def __init__(self, max_in_a_row: int):
        self.max_in_a_row = max_in_a_row
        self.in_a_row = 0
        self.total = 0

    def after_step(self, applied: bool, step: int) -> bool:
        """Returns True when the step was skipped. DeepSpeed marks a step with a non-finite
        gradient norm as not applied, so no norm needs reading back here (a host sync per step)."""
        skipped = not applied
        if not skipped:
            self.in_a_row = 0
            return False
        self.in_a_row += 1
        self.total += 1
        log.warning("step %d: non-finite loss or gradient, update skipped (%d in a row, %d in all)",
                    step, self.in_a_row, self.total)
        return True

    def check(self, step: int) -> None:
        """Raise Diverged once too many in a row were skipped (after the step was logged)."""
        if self.in_a_row >= self.max_in_a_row:
            raise Diverged(f"{self.in_a_row} non-finite steps in a row (train.max_nonfinite_steps="
                           f"{self.max_in_a_row}) up to step {step}; the last good checkpoint is kept")


def injected_nan_steps() -> set[int]:
    """Fault injection for tests: SORA_FAULT_NAN_STEPS=3,4 makes those steps' loss NaN."""
    raw = os.environ.get("SORA_FAULT_NAN_STEPS", "")
    return {int(s) for s in raw.split(",") if s.strip()}
