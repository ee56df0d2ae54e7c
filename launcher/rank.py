"""What each rank runs under a multi-node launcher: `python -m launcher.rank [opts] MODULE ARGS...`.

It starts `python -m MODULE ARGS...` as its child with stdout and stderr appended to one log file
per global rank (`LOG_DIR/rank-<RANK>.log`), waits for it, writes the child's exit code to
`EXIT_DIR/rank-<RANK>` and exits with that code. torchrun and DeepSpeed's launcher both report a
failed rank as a plain 1; the batch script reads these files instead to tell "preempted, checkpoint
saved" (75) from "diverged" (76) from "cannot write" (74) from a crash.

Signals: SIGTERM, SIGINT and SIGHUP (which torchrun / DeepSpeed send their workers on shutdown) are
passed on to the child. SIGUSR1 is passed on only with --forward-usr1: under Slurm every process of
a job step already receives the USR1 that srun forwards, the trainer included, and a second copy
would arrive as a second request. Either way this process itself never dies of USR1, and the child
starts with the default disposition for it (if the trainer installs no handler, USR1 ends it and
the job still requeues, resuming from the last periodic checkpoint).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def exit_status(returncode: int) -> int:
    """A Popen returncode as a shell would report it (killed by signal N -> 128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL it when this process dies (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass  # not Linux: no such guard


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launcher.rank", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--log-dir", required=True, help="rank-<RANK>.log is appended to here")
    p.add_argument("--exit-dir", help="rank-<RANK> gets the child's exit code")
    p.add_argument("--forward-usr1", action="store_true", help="pass SIGUSR1 on to the child")
    p.add_argument("module", help="python module the rank runs, e.g. sora.cli")
    p.add_argument("args", nargs=argparse.REMAINDER)
    ns = p.parse_args(argv)
    rank = os.environ.get("RANK", "0")
    log_dir = Path(ns.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    log = open(log_dir / f"rank-{rank}.log", "ab", buffering=0)
    header = (f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} rank {rank}/{os.environ.get('WORLD_SIZE', '?')} "
              f"(local {os.environ.get('LOCAL_RANK', '?')}) on {socket.gethostname()}, "
              f"job {os.environ.get('SLURM_JOB_ID', '-')} restart {os.environ.get('SLURM_RESTART_COUNT', '0')}: "
              f"python -m {ns.module} {' '.join(ns.args)}\n")
    log.write(header.encode())

    child: subprocess.Popen | None = None

    def forward(signum, _frame):
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    # A handler (never SIG_IGN, which the child would inherit): exec resets it to the default there.
    signal.signal(signal.SIGUSR1, forward if ns.forward_usr1 else lambda *_: None)

    # Its own session: torchrun signals its workers' whole process group (os.killpg), and the trainer
    # should hear each signal once, from us, not twice. It dies with us if we are killed outright.
    child = subprocess.Popen([sys.executable, "-m", ns.module, *ns.args], stdout=log, stderr=log,
                             stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent)
    code = exit_status(child.wait())  # wait() retries after our handlers run (PEP 475)
    log.write(f"==== rank {rank} exited with {code}\n".encode())
    if ns.exit_dir:
        exit_dir = Path(ns.exit_dir)
        exit_dir.mkdir(parents=True, exist_ok=True)
        tmp = exit_dir / f".rank-{rank}.tmp"
        tmp.write_text(f"{code}\n")
        tmp.replace(exit_dir / f"rank-{rank}")
    return code


if __name__ == "__main__":
    sys.exit(main())
