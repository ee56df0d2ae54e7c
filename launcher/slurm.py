"""Render and submit a readable sbatch script: one task per node, torchrun (or DeepSpeed's launcher) on
each, every rank under launcher.rank (one log per rank, its exit code recorded); on USR1 the ranks
checkpoint and exit 75 and the job requeues itself, up to a maximum number of restarts."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

TEMPLATE = Path(__file__).parent / "templates" / "job.sbatch"
DEFAULT_OUTPUT_DIR = "runs/slurm"

# Slurm's --time formats, tried in order: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS.
_SIXTY = r"[0-5]?\d"
_HOUR = r"(?:[01]?\d|2[0-3])"  # hours after "D-" stay below a day
_TIME_FORMATS = [
    rf"(?P<m>\d+)",
    rf"(?P<m>\d+):(?P<s>{_SIXTY})",
    rf"(?P<h>\d+):(?P<m>{_SIXTY}):(?P<s>{_SIXTY})",
    rf"(?P<d>\d+)-(?P<h>{_HOUR})",
    rf"(?P<d>\d+)-(?P<h>{_HOUR}):(?P<m>{_SIXTY})",
    rf"(?P<d>\d+)-(?P<h>{_HOUR}):(?P<m>{_SIXTY}):(?P<s>{_SIXTY})",
]


def parse_time_limit(value: str) -> int:
    """Seconds in a Slurm time limit; ValueError naming `value` when Slurm would not take it."""
    for pattern in _TIME_FORMATS:
        match = re.fullmatch(pattern, value)
        if match:
            parts = {k: int(v) for k, v in match.groupdict().items() if v is not None}
            seconds = ((parts.get("d", 0) * 24 + parts.get("h", 0)) * 60 + parts.get("m", 0)) * 60
            seconds += parts.get("s", 0)
            if seconds == 0:  # Slurm reads 0 as "no limit": then USR1 never comes
                raise ValueError(f"time limit {value!r} is zero; give a positive limit")
            return seconds
    raise ValueError(
        f"bad time limit {value!r}: use MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"
    )


# Network presets: `export VAR=${VAR:-value}` lines, so a variable set before sbatch (or with --env) wins.
COMMON_ENV = {
    "NCCL_DEBUG": "WARN",
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",  # a hung collective raises instead of blocking forever
    "NCCL_ASYNC_ERROR_HANDLING": "1",        # the name older torch reads
    "PYTHONUNBUFFERED": "1",
    "PYTHONFAULTHANDLER": "1",               # a crashed rank prints its Python stack
}
NETWORK_PRESETS = {
    "default": {},                           # NCCL's own choices
    "infiniband": {"NCCL_IB_DISABLE": "0", "NCCL_SOCKET_IFNAME": "^lo,docker"},
    "ethernet": {"NCCL_IB_DISABLE": "1", "NCCL_SOCKET_IFNAME": "^lo,docker"},
    "efa": {"FI_PROVIDER": "efa", "FI_EFA_USE_DEVICE_RDMA": "1", "FI_EFA_FORK_SAFE": "1",
            "NCCL_SOCKET_IFNAME": "^lo,docker"},  # AWS, with the aws-ofi-nccl plugin
}
LAUNCHERS = ("torchrun", "deepspeed")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NAME_FIELDS = ("output_dir", "job_name", "partition", "account", "qos", "constraint")


@dataclass
class SlurmJob:
    args: list[str]  # the sora subcommand and its args
    nodes: int
    gpus_per_node: int  # 0: a CPU job (no GPU request); then nproc_per_node says how many ranks
    nproc_per_node: int | None = None  # ranks per node; default gpus_per_node
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    time: str | None = None
    job_name: str | None = None
    cpus_per_task: int | None = None  # CPUs of the one task per node, shared by its ranks
    mem: str | None = None  # memory per node (= per task)
    output_dir: str = DEFAULT_OUTPUT_DIR
    setup: list[str] = field(default_factory=list)
    sbatch_extra: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # exported as given, after the presets
    network: str = "default"
    signal_seconds: int = 120
    max_restarts: int = 20
    launcher: str = "torchrun"
    python: str = "python"
    module: str = "sora.cli"

    @property
    def script_path(self) -> Path:
        return Path(self.output_dir) / "job.sbatch"

    @property
    def ranks_per_node(self) -> int:
        return self.gpus_per_node if self.nproc_per_node is None else self.nproc_per_node

    def validate(self) -> None:
        """Raise ValueError on anything sbatch would reject late, or that would break the script."""
        if not self.args or self.args[0].startswith("-"):
            raise ValueError("missing the sora subcommand to run (e.g. `train CONFIG key=value ...`)")
        for name in ("nodes", "signal_seconds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.gpus_per_node < 0:
            raise ValueError(f"gpus-per-node must be positive (or 0 for a CPU job), got {self.gpus_per_node}")
        if self.ranks_per_node < 1:
            raise ValueError("nproc-per-node must be positive; a CPU job (--gpus-per-node 0) needs it")
        if self.max_restarts < 0:
            raise ValueError(f"max-restarts must be 0 or more, got {self.max_restarts}")
        if self.cpus_per_task is not None and self.cpus_per_task < 1:
            raise ValueError(f"cpus-per-task must be positive, got {self.cpus_per_task}")
        if self.time is not None and parse_time_limit(self.time) <= self.signal_seconds:
            raise ValueError(
                f"time limit {self.time!r} leaves no room for the USR1 sent "
                f"{self.signal_seconds} s before it"
            )
        if self.mem is not None and not re.fullmatch(r"\d+[KMGT]?", self.mem):
            raise ValueError(f"bad --mem {self.mem!r}: use a number with an optional K/M/G/T suffix")
        if self.network not in NETWORK_PRESETS:
            raise ValueError(f"unknown network preset {self.network!r} (known: {', '.join(NETWORK_PRESETS)})")
        if self.launcher not in LAUNCHERS:
            raise ValueError(f"unknown launcher {self.launcher!r} (known: {', '.join(LAUNCHERS)})")
        # #SBATCH lines are not shell-parsed, so these cannot be quoted: refuse whitespace.
        for name in _NAME_FIELDS:
            value = getattr(self, name)
            if value is not None and (not value or re.search(r"\s", value)):
                raise ValueError(f"{name.replace('_', '-')} {value!r} must be non-empty with no spaces")
        for line in self.sbatch_extra:
            if not line.startswith("#SBATCH ") or "\n" in line:
                raise ValueError(f"sbatch-extra {line!r} must be one line starting with '#SBATCH '")
        for line in self.setup:
            if "\n" in line:
                raise ValueError(f"setup line {line!r} must be a single line; repeat --setup")
        for key, value in self.env.items():
            if not _ENV_NAME.fullmatch(key) or "\n" in str(value):
                raise ValueError(f"bad environment variable {key}={value!r}")
        if not re.fullmatch(r"[A-Za-z_][\w.]*", self.module):
            raise ValueError(f"bad python module name {self.module!r}")

    def _env_block(self) -> str:
        lines = [f"export {k}=${{{k}:-{v}}}" for k, v in COMMON_ENV.items()]
        preset = NETWORK_PRESETS[self.network]
        if preset:
            lines.append(f"# network preset: {self.network}")
            lines += [f"export {k}=${{{k}:-{shlex.quote(v)}}}" for k, v in preset.items()]
        if self.cpus_per_task:
            threads = max(1, self.cpus_per_task // self.ranks_per_node)
            lines.append(f"export OMP_NUM_THREADS=${{OMP_NUM_THREADS:-{threads}}}  # cpus per rank")
        if self.gpus_per_node == 0:
            lines.append("export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}  # no GPUs asked for")
        if self.env:
            lines.append("# --env: set as given")
            lines += [f"export {k}={shlex.quote(str(v))}" for k, v in self.env.items()]
        return "\n".join(lines) + "\n"

    def _node_command(self) -> str:
        rank = (f"-m launcher.rank --log-dir {shlex.quote(self.output_dir + '/rank-logs')} "
                f'--exit-dir "$EXIT_DIR" \\\n    {self.module} {shlex.join(self.args)}')
        python = shlex.quote(self.python)
        if self.launcher == "torchrun":
            return (
                f"  {python} -m torch.distributed.run \\\n"
                f'    --nnodes "$SLURM_NNODES" --nproc-per-node {self.ranks_per_node} \\\n'
                f'    --rdzv-backend c10d --rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv-id "$SLURM_JOB_ID" \\\n'
                f"    --signals-to-handle SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 --shutdown-timeout {self.shutdown_timeout} \\\n"
                f"    {rank}"
            )
        # DeepSpeed's launcher dies of USR1; it ignores it here and the ranks (launcher.rank) catch it.
        return (
            f"""  bash -c 'trap "" USR1; exec "$0" -u -m deepspeed.launcher.runner --node_rank "$SLURM_NODEID" "$@"' \\\n"""
            f"    {python} --no_ssh --no_local_rank --hostfile \"$HOSTFILE\" \\\n"
            f'    --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" --module \\\n'
            f"    launcher.rank --log-dir {shlex.quote(self.output_dir + '/rank-logs')} "
            f'--exit-dir "$EXIT_DIR" \\\n    {self.module} {shlex.join(self.args)}'
        )

    @property
    def shutdown_timeout(self) -> int:
        # Leave time before the limit for the requeue after the ranks stop.
        return max(self.signal_seconds - 30, self.signal_seconds // 2)

    def render(self) -> str:
        """The sbatch script text (validates first)."""
        self.validate()
        out = self.output_dir
        options = [
            f"--job-name={self.job_name or 'sora-' + self.args[0]}",
            f"--nodes={self.nodes}",
            "--ntasks-per-node=1",
        ]
        if self.gpus_per_node:
            options.append(f"--gpus-per-node={self.gpus_per_node}")
        optional = [
            ("cpus-per-task", self.cpus_per_task), ("mem", self.mem),
            ("partition", self.partition), ("account", self.account), ("qos", self.qos),
            ("constraint", self.constraint), ("time", self.time),
        ]
        options += [f"--{k}={v}" for k, v in optional if v is not None]
        options += [
            f"--output={out}/slurm-%j.out",
            "--open-mode=append",  # a requeued job keeps its id: append, do not truncate
            f"--signal=B:USR1@{self.signal_seconds}",
            "--requeue",
        ]
        sbatch_lines = [f"#SBATCH {o}" for o in options] + list(self.sbatch_extra)
        setup = "".join(f"{line}\n" for line in self.setup)
        env = self._env_block()
        if self.launcher == "deepspeed":
            env += (f'HOSTFILE={shlex.quote(out)}/hostfile-"$SLURM_JOB_ID"  # DeepSpeed\'s: every node, '
                    f"{self.ranks_per_node} slots\n"
                    f'scontrol show hostnames "$SLURM_JOB_NODELIST" | sed "s/$/ slots={self.ranks_per_node}/" '
                    f'> "$HOSTFILE"\n')
        blocks = {
            "sbatch_options": "\n".join(sbatch_lines) + "\n",
            "setup": f"# setup lines\n{setup}\n" if setup else "",
            "env": env,
        }
        inline = {
            "script_path": shlex.quote(str(self.script_path)),
            "output_dir": shlex.quote(out),
            "node_launcher": "torchrun" if self.launcher == "torchrun" else "DeepSpeed's launcher",
            "nproc_per_node": str(self.ranks_per_node),
            "signal_seconds": str(self.signal_seconds),
            "max_restarts": str(self.max_restarts),
            "exit_dir": shlex.quote(f"{out}/.exit-codes"),
            "rank_log_dir": shlex.quote(f"{out}/rank-logs"),
            # Slurm cannot pass cpus-per-task from sbatch to srun itself (since 22.05).
            "srun_options": f" --cpus-per-task={self.cpus_per_task}" if self.cpus_per_task else "",
            "node_command": self._node_command(),
        }
        text = TEMPLATE.read_text()
        text = re.sub(r"^\{\{(\w+)\}\}\n", lambda m: blocks.get(m.group(1), m.group(0)), text, flags=re.M)
        return re.sub(r"\{\{(\w+)\}\}", lambda m: inline[m.group(1)], text)


def known_partitions() -> list[str] | None:
    """Partitions of the reachable Slurm cluster, or None when there is none to ask."""
    if shutil.which("sinfo") is None:
        return None
    r = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True)
    if r.returncode != 0:
        return None
    return sorted({p.strip() for p in r.stdout.split() if p.strip()})


def check_partition(partition: str | None) -> None:
    """ValueError if the cluster we can reach has no such partition (no cluster: nothing to check)."""
    if partition is None:
        return
    known = known_partitions()
    if known is not None and partition not in known:
        raise ValueError(f"unknown partition {partition!r} (this cluster has: {', '.join(known) or 'none'})")


def submit(job: SlurmJob) -> str:
    """Write the script to <output-dir>/job.sbatch, sbatch it, record and return the job id."""
    text = job.render()
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise RuntimeError(
            "sbatch not found on PATH: run this on a Slurm login node (or use --dry-run to print the script)."
        )
    check_partition(job.partition)
    out = Path(job.output_dir)
    (out / "rank-logs").mkdir(parents=True, exist_ok=True)  # Slurm will not create log dirs
    job.script_path.write_text(text)
    result = subprocess.run(
        [sbatch, "--parsable", str(job.script_path)], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"sbatch failed ({result.returncode}): {result.stderr.strip()}")
    job_id = result.stdout.strip().split(";")[0]  # --parsable prints "id" or "id;cluster"
    (out / "slurm_job_id").write_text(job_id + "\n")
    with open(out / "slurm_jobs.log", "a") as f:  # every submission, for the record
        f.write(f"{job_id} {time.strftime('%Y-%m-%dT%H:%M:%S')} {shlex.join(job.args)}\n")
    return job_id
