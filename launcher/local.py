"""Run N ranks on this machine through torchrun."""

from __future__ import annotations

import os
import sys


def build_local_command(
    nproc: int,
    args: list[str],
    env: dict[str, str] | None = None,
    *,
    master_port: int | None = None,
    module: str = "sora.cli",
    cuda: bool | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The torchrun argv and environment for `nproc` local ranks running `python -m module args`.

    `env` defaults to os.environ and is copied, never changed; `cuda` defaults to what torch sees.
    """
    if nproc < 1:
        raise ValueError(f"nproc must be positive, got {nproc}")
    if not args or args[0].startswith("-"):
        raise ValueError("missing the sora subcommand to run (e.g. `train CONFIG key=value ...`)")
    env = dict(os.environ if env is None else env)
    if cuda is None:
        import torch  # only here: building a command should not need torch otherwise

        cuda = torch.cuda.is_available()
    if not cuda:
        env.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed would otherwise look for a GPU
        # Split the cores between ranks instead of letting each rank oversubscribe them all.
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    argv = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc)]
    if master_port is None:
        argv.append("--standalone")  # torchrun picks a free port itself
    else:
        argv += ["--master-addr", "127.0.0.1", "--master-port", str(master_port)]
    return argv + ["-m", module, *args], env


def exec_local(nproc: int, args: list[str], *, master_port: int | None = None) -> None:
    """Replace this process with torchrun, so signals reach it directly and its exit code is ours."""
    argv, env = build_local_command(nproc, args, master_port=master_port)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, env)
