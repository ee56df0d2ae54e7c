"""`sora-launch status|cancel|logs RUN_DIR`: the Slurm job recorded in a run directory."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

JOB_ID_FILE = "slurm_job_id"


def recorded_job_id(run_dir: str | Path) -> str:
    path = Path(run_dir) / JOB_ID_FILE
    if not path.is_file():
        raise ValueError(f"no Slurm job recorded in {run_dir} (no {JOB_ID_FILE}: was it submitted with sora-launch slurm?)")
    return path.read_text().strip()


def _slurm(*argv: str) -> subprocess.CompletedProcess:
    if shutil.which(argv[0]) is None:
        raise RuntimeError(f"{argv[0]} not found on PATH: run this where Slurm's commands are")
    return subprocess.run(argv, capture_output=True, text=True)


def job_info(job_id: str) -> dict[str, str] | None:
    """`scontrol show job` as a dict (JobState, Restarts, ExitCode, Reason, ...), None if Slurm forgot it."""
    r = _slurm("scontrol", "show", "job", "-o", job_id)
    if r.returncode != 0:
        if "Invalid job id" in r.stderr:
            return None
        raise RuntimeError(f"scontrol show job {job_id} failed: {r.stderr.strip()}")
    info = {}
    for token in r.stdout.split():
        if "=" in token:
            key, value = token.split("=", 1)
            info.setdefault(key, value)
    return info


def _accounting_state(job_id: str) -> str | None:
    """State from accounting (sacct), for a job the controller no longer remembers; None without it."""
    if shutil.which("sacct") is None:
        return None
    r = subprocess.run(["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "State,ExitCode,Restarts"],
                       capture_output=True, text=True)
    line = r.stdout.strip().splitlines()[-1] if r.returncode == 0 and r.stdout.strip() else ""
    return line or None


def _last_metrics(run_dir: Path) -> dict | None:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    for line in reversed(path.read_text().splitlines()):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written
    return None


def status(run_dir: str | Path) -> str:
    run_dir = Path(run_dir)
    job_id = recorded_job_id(run_dir)
    lines = [f"run dir   {run_dir}", f"job       {job_id}"]
    info = job_info(job_id)
    if info is None:
        acct = _accounting_state(job_id)
        lines.append(f"state     {acct.replace('|', '  exit ', 1)}" if acct else
                     "state     unknown: Slurm no longer remembers this job (and no accounting)")
    else:
        state = info.get("JobState", "?")
        reason = info.get("Reason", "None")
        lines.append(f"state     {state}" + (f" ({reason})" if reason not in ("None", "(null)") else ""))
        lines.append(f"restarts  {info.get('Restarts', '0')}")
        lines.append(f"exit code {info.get('ExitCode', '?')}")
        lines.append(f"nodes     {info.get('NumNodes', '?')} {info.get('NodeList', '')}".rstrip())
        lines.append(f"time      {info.get('RunTime', '?')} of {info.get('TimeLimit', '?')}")
    newest = run_dir / "checkpoints" / "newest"
    if newest.is_file():
        lines.append(f"newest checkpoint  {newest.read_text().strip()}")
    metrics = _last_metrics(run_dir)
    if metrics is not None:
        loss = metrics.get("loss")
        lines.append(f"last logged step   {metrics.get('step')}" + (f"  loss {loss:.4g}" if isinstance(loss, float) else ""))
    return "\n".join(lines)


def cancel(run_dir: str | Path) -> str:
    job_id = recorded_job_id(run_dir)
    r = _slurm("scancel", job_id)
    if r.returncode != 0:
        raise RuntimeError(f"scancel {job_id} failed: {r.stderr.strip()}")
    return f"cancelled job {job_id}"


def log_files(run_dir: str | Path) -> list[Path]:
    """The batch log(s) of the recorded job first, then the per-node and per-rank logs."""
    run_dir = Path(run_dir)
    job_id = recorded_job_id(run_dir)
    batch = sorted(run_dir.glob(f"slurm-{job_id}.out"))
    ranks = sorted((run_dir / "rank-logs").glob("*.log"), key=lambda p: (not p.name.startswith(job_id), p.name))
    return batch + ranks


def log_path(run_dir: str | Path, rank: int | None) -> Path:
    run_dir = Path(run_dir)
    job_id = recorded_job_id(run_dir)
    path = run_dir / ("rank-logs" if rank is not None else "") / (
        f"rank-{rank}.log" if rank is not None else f"slurm-{job_id}.out")
    if not path.is_file():
        raise ValueError(f"no log at {path} yet" + ("" if rank is None else " (has the job started?)"))
    return path


def tail(path: Path, lines: int) -> str:
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:] if lines > 0 else text)
