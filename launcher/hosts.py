"""Multi-node without Slurm: a hostfile (DeepSpeed's format) and a script that starts every node.

Hostfile: one `HOSTNAME slots=N` per line (N ranks on that host); blank lines and `#` comments are
ignored. The first host runs the rendezvous. With `--launcher torchrun` the script starts torchrun on
each host over ssh (c10d rendezvous, `--node-rank` fixed by the hostfile order); with
`--launcher deepspeed` it hands the hostfile to DeepSpeed's runner (pdsh over ssh).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from launcher.slurm import COMMON_ENV, LAUNCHERS, NETWORK_PRESETS

_HOST = r"[A-Za-z0-9_][A-Za-z0-9_.:-]*"  # names, IPv4 (IPv6 with colons)
_LINE = re.compile(rf"(?P<host>{_HOST})\s+slots\s*=\s*(?P<slots>\S+)")


def parse_hostfile(path: str | Path) -> list[tuple[str, int]]:
    """[(host, slots)] in file order; ValueError with the file and line number for a bad line."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"hostfile {str(path)!r} not found")
    hosts: list[tuple[str, int]] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(p.read_text().splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        where = f"hostfile {path} line {number}"
        match = _LINE.fullmatch(text)
        if not match:
            raise ValueError(f"{where}: expected 'HOSTNAME slots=N', got {line.strip()!r}")
        host, slots = match["host"], match["slots"]
        if not slots.isdigit() or int(slots) < 1:
            raise ValueError(f"{where}: slots must be a positive integer, got {slots!r}")
        if host in seen:
            raise ValueError(f"{where}: host {host!r} already listed on line {seen[host]}")
        seen[host] = number
        hosts.append((host, int(slots)))
    if not hosts:
        raise ValueError(f"hostfile {path} lists no hosts")
    return hosts


@dataclass
class HostsJob:
    args: list[str]
    hostfile: str
    hosts: list[tuple[str, int]]
    output_dir: str
    workdir: str  # where the command runs on every host (a shared filesystem, as under Slurm)
    master_port: int = 29500
    launcher: str = "torchrun"
    setup: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    network: str = "default"
    python: str = "python"
    ssh: str = "ssh"
    module: str = "sora.cli"

    @property
    def script_path(self) -> Path:
        return Path(self.output_dir) / "hosts.sh"

    def validate(self) -> None:
        if not self.args or self.args[0].startswith("-"):
            raise ValueError("missing the sora subcommand to run (e.g. `train CONFIG key=value ...`)")
        if self.launcher not in LAUNCHERS:
            raise ValueError(f"unknown launcher {self.launcher!r} (known: {', '.join(LAUNCHERS)})")
        if self.network not in NETWORK_PRESETS:
            raise ValueError(f"unknown network preset {self.network!r} (known: {', '.join(NETWORK_PRESETS)})")
        if not 0 < self.master_port < 65536:
            raise ValueError(f"master-port must be in 1..65535, got {self.master_port}")
        if self.launcher == "torchrun" and len({s for _, s in self.hosts}) > 1:
            raise ValueError("torchrun starts the same number of ranks on every host; give every host "
                             "the same slots, or use --launcher deepspeed")

    def _remote_env(self) -> list[str]:
        lines = [f"export {k}=${{{k}:-{v}}}" for k, v in COMMON_ENV.items()]
        lines += [f"export {k}=${{{k}:-{shlex.quote(v)}}}" for k, v in NETWORK_PRESETS[self.network].items()]
        lines += [f"export {k}={shlex.quote(str(v))}" for k, v in self.env.items()]
        return lines

    def render(self) -> str:
        self.validate()
        master = self.hosts[0][0]
        logs = f"{self.output_dir}/rank-logs"
        rank = (f"launcher.rank --forward-usr1 --log-dir {shlex.quote(logs)} "
                f"--exit-dir {shlex.quote(self.output_dir + '/.exit-codes')} {self.module} {shlex.join(self.args)}")
        head = [
            "#!/bin/bash",
            f"# Multi-node sora run written by `sora-launch hosts --hostfile {self.hostfile}`; run it again with:",
            f"#   bash {shlex.quote(str(self.script_path))}",
            f"# {len(self.hosts)} host(s): " + ", ".join(f"{h} ({s} ranks)" for h, s in self.hosts),
            f"# Per-rank logs: {logs}/rank-<RANK>.log; per-host logs next to them.",
            "set -u",
            f"mkdir -p {shlex.quote(logs)}",
            "",
        ]
        prelude = [f"cd {shlex.quote(self.workdir)}", *self.setup, *self._remote_env()]
        if self.launcher == "deepspeed":
            # DeepSpeed's runner reads the hostfile itself and reaches the other hosts with pdsh.
            body = [
                "# DeepSpeed's runner starts every host of the hostfile (pdsh over ssh).",
                *prelude,
                f"exec {shlex.quote(self.python)} -u -m deepspeed.launcher.runner --no_local_rank "
                f"--hostfile {shlex.quote(self.hostfile)} --master_addr {master} --master_port {self.master_port} "
                f"--module \\\n  {rank}",
            ]
            return "\n".join(head + body) + "\n"
        nproc = self.hosts[0][1]
        body = [
            "# One torchrun per host over ssh; they meet at the first host (c10d rendezvous).",
            "PIDS=()",
            "stop() { kill \"${PIDS[@]}\" 2>/dev/null; }  # ssh hangs up: the remote torchruns get SIGHUP",
            "trap stop INT TERM",
        ]
        for node_rank, (host, _) in enumerate(self.hosts):
            remote = "\n  ".join([""] + prelude + [
                f"exec {shlex.quote(self.python)} -m torch.distributed.run --nnodes {len(self.hosts)} "
                f"--nproc-per-node {nproc} --rdzv-backend c10d --rdzv-endpoint {master}:{self.master_port} "
                f"--rdzv-id sora --signals-to-handle SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 \\\n    -m {rank}"
            ]) + "\n"
            body += [
                f"# node {node_rank}: {host}",
                f"{self.ssh} -tt {host} {shlex.quote(remote)} \\",
                f"  >> {shlex.quote(f'{logs}/host-{host}.log')} 2>&1 < /dev/null &",
                "PIDS+=($!)",
            ]
        body += [
            "STATUS=0",
            'for pid in "${PIDS[@]}"; do wait "$pid" || STATUS=$?; done',
            'echo "all hosts done, exit status $STATUS"',
            'exit "$STATUS"',
        ]
        return "\n".join(head + body) + "\n"
