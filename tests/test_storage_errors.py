"""A run that cannot write says why, through the real command line.

- A run directory that cannot be written (a path under a file; a read-only mount) stops before
  any training step with one line naming it (exit 74).
- On a tiny filesystem (tmpfs, 2 ranks): the first save's estimate fits but the checkpoint does
  not, so the write itself fails mid-way; then, with room for one checkpoint and a half, the next
  save is refused before any rank writes. Every rank ends with one line naming the path, the space
  and the last complete checkpoint; `newest` stays on the last complete one; with space freed the
  same command resumes from it and finishes.
"""
import contextlib
import os
import subprocess

import pytest

from sora.config import load_config
from sora.train.artifacts import build_vae
from tests.cli_runs import ROOT, exit_status, logged_steps, newest, sora, sora_ranks, vae_args

pytestmark = pytest.mark.slow


def _one_error_line(text: str, command: str) -> str:
    lines = [line for line in text.splitlines() if line.startswith(f"sora {command}: ")]
    assert len(lines) == 1 and "Traceback" not in text, text[-3000:]
    return lines[0]


def test_a_run_directory_under_a_file_stops_before_any_step(world):
    (world / "a-file").write_text("not a directory")
    run = world / "a-file" / "run"
    r = sora(*vae_args(world, run, 3), cwd=world)
    assert r.returncode == 74, r.stderr[-3000:]
    line = _one_error_line(r.stderr, "train-vae")
    assert f"the run directory '{run}' is not writable: Not a directory" in line


@contextlib.contextmanager
def _mounted(target, *mount_args):
    """mount ... target (as root), unmounted on exit; skips the test where mounting is not allowed."""
    target.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", *mount_args, str(target)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount here ({(r.stderr or r.stdout).strip()}): needs root")
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True)


def _remount_tmpfs(target, size: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(target)], check=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="a read-only bind mount needs root (chmod does not stop root)")
def test_a_read_only_run_directory_stops_before_any_step(world, tmp_path):
    (tmp_path / "src").mkdir()
    with _mounted(tmp_path / "ro", "--bind", str(tmp_path / "src")):
        subprocess.run(["mount", "-o", "remount,bind,ro", str(tmp_path / "ro")], check=True)
        run = tmp_path / "ro" / "run"
        r = sora(*["train", f"{ROOT}/configs/demo.yaml", f"data.path={world / 'data'}", f"vae.run={world / 'vae'}",
                   f"run.dir={run}", "train.steps=3"], cwd=world)
        assert r.returncode == 74, r.stderr[-3000:]
        assert f"the run directory '{run}' is not writable: Read-only file system" in _one_error_line(r.stderr, "train")


def _rank_lines(out: str) -> list[str]:
    lines = [line for line in out.splitlines() if line.startswith("sora train-vae: storage error: ")]
    assert len(lines) == 2, out[-4000:]          # one per rank
    return lines


@pytest.mark.distributed
@pytest.mark.skipif(os.geteuid() != 0, reason="a tmpfs mount needs root")
def test_a_full_disk_stops_every_rank_with_the_reason_then_resumes(world, tmp_path):
    # ZeRO-2, fp32: a checkpoint holds the weights (4 B/param) and the optimizer's fp32 master copy
    # and Adam moments (12 B/param); the first save is estimated from weights + moments (12 B/param)
    params = sum(p.numel() for p in build_vae(load_config(f"{ROOT}/configs/demo-vae.yaml", ["vae.channels=8"])).parameters())
    args = lambda run: vae_args(world, run, 6, "train.zero_stage=2", "run.save_every=2")   # saves after steps 1, 3, 5
    with _mounted(tmp_path / "small", "-t", "tmpfs", "-o", f"size={14 * params + 64 * 1024}", "tmpfs") as small:
        run = small / "run"
        # 1. the estimate (12 B/param) fits, the checkpoint (16 B/param) does not: the write fails
        r = sora_ranks(2, *args(run), cwd=world)
        assert r.returncode != 0
        for line in _rank_lines(r.stdout):
            assert f"saving checkpoint step00000001 in '{run / 'checkpoints'}' failed (" in line
            assert "free on its filesystem" in line and "the last complete checkpoint is none" in line
        assert newest(run) is None

        # 2. room for one checkpoint and a half: the second save is refused before anyone writes
        _remount_tmpfs(small, 24 * params + 256 * 1024)
        r = sora_ranks(2, *args(run), cwd=world)
        assert r.returncode != 0
        assert "removed incomplete checkpoint" in r.stdout
        for line in _rank_lines(r.stdout):
            assert f"not enough free space to save a checkpoint in '{run / 'checkpoints'}': it needs " in line
            assert "x the size of step00000001" in line
            assert f"the last complete checkpoint is {run / 'checkpoints' / 'step00000001'}" in line
        assert newest(run) == "step00000001"
        assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir()) == ["step00000001"]
        assert exit_status(run)["code"] == 74

        # 3. space freed: the same command resumes from the last complete checkpoint and finishes
        _remount_tmpfs(small, 64 * 2 ** 20)
        r = sora_ranks(2, *args(run), cwd=world)
        assert r.returncode == 0, r.stdout[-4000:]
        assert "at step 2 (clips_taken" in r.stdout
        assert logged_steps(run) == list(range(6)) and exit_status(run)["code"] == 0
