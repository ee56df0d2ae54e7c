"""Will the run's files fit? The run directory is probed before any training step; each
checkpoint's size is checked against the free space before any rank starts writing it.

Every check is agreed over all ranks (`agree`), so every rank stops with the same message: the
path, the space needed and the last complete checkpoint.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch.distributed as dist

from sora.train.checkpoint import newest_tag

GROWTH = 1.05   # a checkpoint may be a little larger than the last one (pickle and JSON lengths vary)


def human(n: float) -> str:
    if n < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB"):
        n /= 1024
        if n < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} GiB"


def writable_problem(run_dir: Path, rank: int) -> str | None:
    """None if this rank can create run_dir/checkpoints and write a file there, else why not."""
    try:
        ckpt_dir = run_dir / "checkpoints"
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        probe = ckpt_dir / f".write-probe-rank{rank:05d}"
        probe.write_bytes(b"probe")
        probe.unlink()
    except OSError as e:
        return f"the run directory '{run_dir}' is not writable: {e.strerror or e}" + (
            f" ('{e.filename}')" if e.filename and str(e.filename) != str(run_dir) else "")
    return None


def dir_bytes(path: Path) -> int:
    """Bytes the files under `path` take on disk (allocated blocks, at least their length)."""
    total = 0
    for p in path.rglob("*"):
        if p.is_file():
            st = p.stat()
            total += max(st.st_size, getattr(st, "st_blocks", 0) * 512)
    return total


def estimated_bytes(engines: dict, ema) -> int:
    """What a first checkpoint takes at least: each engine's weights plus Adam's two fp32 moments,
    and the fp32 EMA. (DeepSpeed adds fp32 master copies and pickle framing on top.)"""
    total = 0
    for engine in engines.values():
        for p in engine.module.parameters():
            total += getattr(p, "ds_numel", p.numel()) * (p.element_size() + 8)
    if ema is not None:
        total += sum(getattr(p, "ds_numel", p.numel()) * 4 for p in ema.params)
    return total


def last_complete(ckpt_dir: Path) -> str:
    tag = newest_tag(ckpt_dir)
    return str(ckpt_dir / tag) if tag else "none (no checkpoint was saved yet)"


def checkpoint_space_problem(ckpt_dir: Path, engines: dict, ema) -> str | None:
    """None if the next checkpoint fits in `ckpt_dir`'s filesystem, else a message saying why not:
    a checkpoint needs GROWTH x the size of the last complete one (or, before the first, an
    estimate from the parameter and optimizer bytes)."""
    tag = newest_tag(ckpt_dir)
    if tag is not None:
        needed, how = int(dir_bytes(ckpt_dir / tag) * GROWTH), f"{GROWTH:g} x the size of {tag}"
    else:
        needed, how = estimated_bytes(engines, ema), "estimated from the parameter and optimizer bytes"
    free = shutil.disk_usage(ckpt_dir).free
    if free >= needed:
        return None
    return (f"not enough free space to save a checkpoint in '{ckpt_dir}': it needs {human(needed)} ({how}), "
            f"the filesystem has {human(free)} free; the last complete checkpoint is {last_complete(ckpt_dir)}. "
            "Free space (or lower run.keep_checkpoints) and rerun the same command to resume")


def save_failed(ckpt_dir: Path, tag: str, error: BaseException) -> str:
    """Why a save that started did not complete: the error (torch.save reports a full disk as an
    obscure RuntimeError, so the free space is named too) and what a restart resumes from."""
    try:
        free = f"{human(shutil.disk_usage(ckpt_dir).free)} free on its filesystem"
    except OSError as e:
        free = f"free space unknown: {e.strerror or e}"
    return (f"saving checkpoint {tag} in '{ckpt_dir}' failed ({free}): {type(error).__name__}: {error}; the last "
            f"complete checkpoint is {last_complete(ckpt_dir)} (the partial save is removed at the next start)")


def agree(problem: str | None) -> str | None:
    """The first problem any rank found, on every rank (a collective: call it on all ranks)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return problem
    found = [None] * dist.get_world_size()
    dist.all_gather_object(found, problem)
    return next((f"rank {r}: {p}" for r, p in enumerate(found) if p), None)
