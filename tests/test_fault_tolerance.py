"""Exact resume, surviving faults and export, through the real command line on a tiny run.

- SIGKILL mid-run, restart: the losses and gradient norms after the restart are bitwise those of
  an uninterrupted run (CPU, fp32).
- SIGUSR1: checkpoint, exit 75; the restart resumes after it.
- Non-finite steps are skipped and counted; K in a row stop training with exit 76.
- A save that never completed is never resumed from.
- A killed rank makes the job exit (no hang) naming the rank.
- `sora export` gathers the ZeRO-3 shards into the same weights the run wrote; `sora sample` takes it.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.cli_runs import dit_args, env, logged, logged_steps, metrics, newest, sora, wait_for

pytestmark = pytest.mark.slow


def test_sigkill_then_resume_is_bitwise_identical(world):
    steps = 8
    ref = world / "ref"
    r = sora(*dit_args(world, ref, steps, "run.save_every=2"), cwd=world)
    assert r.returncode == 0, r.stderr[-3000:]

    run = world / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "sora.cli", *dit_args(world, run, steps, "run.save_every=2")],
                            cwd=world, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: newest(run) == "step00000003", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert newest(run) == "step00000003", "the run ended before it could be killed mid-way"
    killed_at = max(metrics(run))
    assert killed_at < steps - 1, f"the run got to step {killed_at} before the kill"

    r = sora(*dit_args(world, run, steps, "run.save_every=2"), cwd=world)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stderr
    a, b = metrics(ref), metrics(run)
    assert logged_steps(run) == list(range(steps))            # steps after the checkpoint were dropped, then relogged
    for s in range(steps):
        assert (a[s]["loss"], a[s]["grad_norm"], a[s]["tokens"]) == (b[s]["loss"], b[s]["grad_norm"], b[s]["tokens"]), s
    ref_w, run_w = load_file(str(ref / "final" / "model.safetensors")), load_file(str(run / "final" / "model.safetensors"))
    assert all(torch.equal(ref_w[k], run_w[k]) for k in ref_w)
    ref_e, run_e = load_file(str(ref / "final" / "ema.safetensors")), load_file(str(run / "final" / "ema.safetensors"))
    assert all(torch.equal(ref_e[k], run_e[k]) for k in ref_e)

    # export gathers the same full weights offline, raw and EMA; sample loads the exported file
    for flag, want in (([], ref_w), (["--ema"], ref_e)):
        out = world / f"export{len(flag)}.safetensors"
        r = sora("export", "--run", str(ref), "--out", str(out), *flag, cwd=world)
        assert r.returncode == 0, r.stderr[-3000:]
        got = load_file(str(out))
        assert sorted(got) == sorted(want)
        assert all(torch.equal(got[k], want[k]) for k in want)
    r = sora("sample", "--run", str(world / "export1.safetensors"), "--prompt", "a red circle moving up",
             "--frames", "5", "--height", "32", "--width", "48", "--steps", "2", "--out", str(world / "x.gif"), cwd=world)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (world / "x.gif").stat().st_size > 0


def test_sigusr1_checkpoints_and_exits_75_then_resumes(world):
    run = world / "usr1"
    proc = subprocess.Popen([sys.executable, "-m", "sora.cli", *dit_args(world, run, 40, "run.save_every=100")],
                            cwd=world, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: logged(run), proc)
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, err[-3000:]
    tag = newest(run)
    assert tag is not None
    status = json.loads((run / "exit_status.json").read_text())
    assert status["code"] == 75 and "SIGUSR1" in status["message"]
    step = int(tag.removeprefix("step"))
    r = sora(*dit_args(world, run, step + 3, "run.save_every=100"), cwd=world)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"at step {step + 1}" in r.stderr
    assert json.loads((run / "exit_status.json").read_text())["code"] == 0


def test_nonfinite_steps_are_skipped_then_stop_training(world):
    run = world / "nan"
    r = sora(*dit_args(world, run, 10, "run.save_every=3", "train.max_nonfinite_steps=2"), cwd=world,
             env_=env(SORA_FAULT_NAN_STEPS="1,4,5"))
    assert r.returncode == 76, r.stderr[-3000:]
    m = metrics(run)
    assert m[1]["nonfinite_skipped"] == 1 and m[2]["nonfinite_skipped"] == 1
    assert m[5]["nonfinite_skipped"] == 3
    assert 6 not in m                              # stopped at the second one in a row
    assert newest(run) == "step00000002"           # the last good checkpoint stays the newest
    assert json.loads((run / "exit_status.json").read_text())["code"] == 76


def test_incomplete_save_is_never_resumed_from(world):
    run = world / "partial"
    r = sora(*dit_args(world, run, 2, "run.save_every=1"), cwd=world)
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = run / "checkpoints"
    assert newest(run) == "step00000001"
    # a save killed half-way: its files exist only under the temporary name, the pointer never moved
    broken = ckpt / "tmp-step00000007"
    broken.mkdir()
    (broken / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_bytes(b"half a file")
    r = sora(*dit_args(world, run, 4, "run.save_every=1"), cwd=world)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "at step 2" in r.stderr and "removed incomplete checkpoint" in r.stderr
    assert not broken.exists()
    assert newest(run) == "step00000003"
    assert sorted(p.name for p in ckpt.iterdir() if p.is_dir()) == ["step00000002", "step00000003"]  # keep 2


def _rank_pids(launcher_pid: int) -> dict[int, int]:
    """RANK -> pid of the launcher's worker processes (from /proc)."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = (d / "environ").read_bytes().split(b"\0")
            stat = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid != launcher_pid:
            continue
        for kv in env:
            if kv.startswith(b"RANK="):
                out[int(kv[5:])] = int(d.name)
    return out


@pytest.mark.distributed
def test_a_killed_rank_stops_the_others_promptly(world):
    run = world / "deadrank"
    cmd = [sys.executable, "-m", "launcher.cli", "local", "--nproc", "2",
           *dit_args(world, run, 400, "run.save_every=1000", "parallel.timeout_s=30")]
    proc = subprocess.Popen(cmd, cwd=world, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: logged(run), proc)
    pids = _rank_pids(proc.pid)
    assert set(pids) == {0, 1}, pids
    os.kill(pids[1], signal.SIGKILL)
    killed = time.time()
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert time.time() - killed < 90, "the surviving rank hung"
    # torchrun's failure report names the killed rank and how it died
    assert re.search(r"rank\s*:\s*1 \(local_rank: 1\)\s*\n\s*exitcode\s*:\s*-9", out), out[-3000:]
