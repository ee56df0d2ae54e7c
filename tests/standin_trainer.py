"""A tiny stand-in for `sora train` in the launcher tests: the same contract, none of the model.

    python -m standin_trainer train RUN_DIR STEPS [--step-time S] [--diverge-at K]

Ranks join a gloo group (torchrun / DeepSpeed's launcher set the environment), resume from
RUN_DIR/checkpoints/newest when it exists, and run STEPS steps; rank 0 appends one JSON line per step
to RUN_DIR/metrics.jsonl. On SIGUSR1 or SIGTERM every rank agrees (all-reduce) at the next step
boundary, the checkpoint is saved (the `newest` pointer moved after every rank is done) and all exit
with PREEMPTED (75). --diverge-at K exits with DIVERGED (76) at step K, without checkpointing.
"""

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from sora.train.exit_codes import DIVERGED, PREEMPTED


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["train"])
    p.add_argument("run_dir")
    p.add_argument("steps", type=int)
    p.add_argument("--step-time", type=float, default=0.2)
    p.add_argument("--diverge-at", type=int, default=-1)
    a = p.parse_args()

    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signal.Signals(signum).name  # a flag; a second signal changes nothing
        print(f"got {stop['signal']}", flush=True)

    signal.signal(signal.SIGUSR1, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    run = Path(a.run_dir)
    ckpt = run / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    newest = ckpt / "newest"
    start = int((ckpt / newest.read_text().strip() / "step").read_text()) if newest.exists() else 0
    restart = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    print(f"rank {rank}/{world} restart {restart}: resumed from step {start}", flush=True)

    def save(step: int) -> None:
        if rank == 0:
            d = ckpt / f"step-{step}"
            d.mkdir(exist_ok=True)
            (d / "step").write_text(str(step))
        dist.barrier()  # every rank has saved its part
        if rank == 0:
            tmp = ckpt / "newest.tmp"
            tmp.write_text(f"step-{step}\n")
            tmp.replace(newest)
        dist.barrier()

    for step in range(start, a.steps):
        flag = torch.tensor([1.0 if stop["signal"] else 0.0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # all ranks stop at the same step
        if flag.item():
            save(step)
            print(f"rank {rank}: checkpointed at step {step}, exiting {PREEMPTED}", flush=True)
            dist.destroy_process_group()
            return PREEMPTED
        if step == a.diverge_at:
            print(f"rank {rank}: loss is not finite at step {step}, exiting {DIVERGED}", flush=True)
            dist.destroy_process_group()   # exiting with gloo's threads alive can abort (134) instead
            return DIVERGED
        time.sleep(a.step_time)
        x = torch.tensor([float(step)])
        dist.all_reduce(x)
        if rank == 0:
            with open(run / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"step": step, "loss": 1.0 / (1 + step), "world": world, "restart": restart,
                                    "sum": x.item()}) + "\n")
    save(a.steps)
    print(f"rank {rank}: finished {a.steps} steps", flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
