"""Render and submit a readable sbatch script: one task per node, torchrun on each, requeue on USR1."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
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


def default_output_dir(args: list[str]) -> str:
    """The run directory from a `run.dir=...` override among the sora args, else runs/slurm."""
    for arg in reversed(args):  # the last override wins, as in the config merge
        if arg.startswith("run.dir="):
            return arg.split("=", 1)[1]
    return DEFAULT_OUTPUT_DIR


@dataclass
class SlurmJob:
    args: list[str]  # the sora subcommand and its args
    nodes: int
    gpus_per_node: int
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    time: str | None = None
    job_name: str | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    output_dir: str = DEFAULT_OUTPUT_DIR
    setup: list[str] = field(default_factory=list)
    sbatch_extra: list[str] = field(default_factory=list)
    signal_seconds: int = 120
    python: str = "python"
    module: str = "sora.cli"

    @property
    def script_path(self) -> Path:
        return Path(self.output_dir) / "job.sbatch"

    def validate(self) -> None:
        """Raise ValueError on anything sbatch would reject late, or that would break the script."""
        if not self.args or self.args[0].startswith("-"):
            raise ValueError("missing the sora subcommand to run (e.g. `train CONFIG key=value ...`)")
        for name in ("nodes", "gpus_per_node", "signal_seconds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.cpus_per_task is not None and self.cpus_per_task < 1:
            raise ValueError(f"cpus-per-task must be positive, got {self.cpus_per_task}")
        if self.time is not None and parse_time_limit(self.time) <= self.signal_seconds:
            raise ValueError(
                f"time limit {self.time!r} leaves no room for the USR1 sent "
                f"{self.signal_seconds} s before it"
            )
        if self.mem is not None and not re.fullmatch(r"\d+[KMGT]?", self.mem):
            raise ValueError(f"bad --mem {self.mem!r}: use a number with an optional K/M/G/T suffix")
        # #SBATCH lines are not shell-parsed, so these cannot be quoted: refuse whitespace.
        for name in ("output_dir", "job_name", "partition", "account", "qos", "constraint"):
            value = getattr(self, name)
            if value is not None and (not value or re.search(r"\s", value)):
                raise ValueError(f"{name.replace('_', '-')} {value!r} must be non-empty with no spaces")
        for line in self.sbatch_extra:
            if not line.startswith("#SBATCH ") or "\n" in line:
                raise ValueError(f"sbatch-extra {line!r} must be one line starting with '#SBATCH '")
        for line in self.setup:
            if "\n" in line:
                raise ValueError(f"setup line {line!r} must be a single line; repeat --setup")

    def render(self) -> str:
        """The sbatch script text (validates first)."""
        self.validate()
        out = self.output_dir
        options = [
            f"--job-name={self.job_name or 'sora-' + self.args[0]}",
            f"--nodes={self.nodes}",
            "--ntasks-per-node=1",
            f"--gpus-per-node={self.gpus_per_node}",
        ]
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
        extra_env = ""
        if self.cpus_per_task:
            threads = max(1, self.cpus_per_task // self.gpus_per_node)
            extra_env = f"export OMP_NUM_THREADS=${{OMP_NUM_THREADS:-{threads}}}  # cpus per rank\n"
        setup = "".join(f"{line}\n" for line in self.setup)
        blocks = {
            "sbatch_options": "\n".join(sbatch_lines) + "\n",
            "setup": f"# --setup lines\n{setup}\n" if setup else "",
            "extra_env": extra_env,
        }
        inline = {
            "script_path": shlex.quote(str(self.script_path)),
            "gpus_per_node": str(self.gpus_per_node),
            "signal_seconds": str(self.signal_seconds),
            "rank_log_dir": shlex.quote(f"{out}/rank-logs"),
            # Slurm cannot pass cpus-per-task from sbatch to srun itself (since 22.05).
            "srun_options": f" --cpus-per-task={self.cpus_per_task}" if self.cpus_per_task else "",
            "python": shlex.quote(self.python),
            # Leave time before the limit for the requeue after the ranks stop.
            "shutdown_timeout": str(max(self.signal_seconds - 30, self.signal_seconds // 2)),
            "module": self.module,
            "sora_args": shlex.join(self.args),
        }
        text = TEMPLATE.read_text()
        text = re.sub(r"^\{\{(\w+)\}\}\n", lambda m: blocks[m.group(1)], text, flags=re.M)
        return re.sub(r"\{\{(\w+)\}\}", lambda m: inline[m.group(1)], text)


def submit(job: SlurmJob) -> str:
    """Write the script to <output-dir>/job.sbatch, sbatch it, record and return the job id."""
    text = job.render()
    out = Path(job.output_dir)
    (out / "rank-logs").mkdir(parents=True, exist_ok=True)  # Slurm will not create log dirs
    job.script_path.write_text(text)
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise RuntimeError(
            f"sbatch not found on PATH: run this on a Slurm login node. "
            f"The script is at {job.script_path} (or use --dry-run to print it)."
        )
    result = subprocess.run(
        [sbatch, "--parsable", str(job.script_path)], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"sbatch failed ({result.returncode}): {result.stderr.strip()}")
    job_id = result.stdout.strip().split(";")[0]  # --parsable prints "id" or "id;cluster"
    (out / "slurm_job_id").write_text(job_id + "\n")
    return job_id
