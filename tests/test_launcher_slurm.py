"""sora-launch against a real single-node Slurm that this module starts (tests/slurm_cluster.py).

A 2-rank job (torchrun + gloo, the stand-in trainer tests/standin_trainer.py) is submitted with
`sora-launch slurm`, signalled like a preemption (`scancel --signal=USR1 --batch`), checkpoints, exits
75, requeues itself, resumes from its checkpoint and finishes with every step logged exactly once.
The same cycle with the real trainers, `sora train configs/demo.yaml` and `sora train-vae
configs/demo-vae.yaml` at a tiny size (2 ranks, tiny data and VAE made here), USR1 mid-run -> the
trainer checkpoints, exits 75 (exit_status.json, launcher.rank's record, the batch script's requeue)
-> the second start logs "resumed from ... at step K" with K-1 that checkpoint -> it finishes
(exit_status.json code 0, final weights) with every step in metrics.jsonl once.
Then: a diverged run (76) is not requeued, the restart limit stops requeueing, an unknown partition is
refused before submitting, and status / logs / cancel work on real jobs.

Skips (saying why) only where Slurm cannot be installed: not root, or no apt-get, and never in CI
(CI=true: tests/required_tools.py). On a root machine with apt-get, `make test` installs Slurm
(scripts/install_slurm.sh); if it is still missing, these fail.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher import cli
from tests.slurm_cluster import cluster_for_tests, finished, job, steps, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
TESTS = Path(__file__).parent
STEPS = 30


@pytest.fixture(scope="module")
def cluster():
    with cluster_for_tests() as c:
        yield c


def submit(run: Path, *trainer_args: str, extra: tuple[str, ...] = ()) -> str:
    argv = ["slurm", "--nodes", "1", "--gpus-per-node", "0", "--nproc-per-node", "2", "--partition", "debug",
            "--time", "10:00", "--signal-seconds", "60", "--job-name", run.name, "--python", sys.executable,
            "--module", "standin_trainer", "--env", f"PYTHONPATH={TESTS}{os.pathsep}{TESTS.parent}",
            "--env", "OMP_NUM_THREADS=1", "--output-dir", str(run), *extra,
            "--", "train", str(run), str(STEPS), *trainer_args]
    assert cli.main(argv) == 0
    return (run / "slurm_job_id").read_text().strip()


def test_preempt_requeue_resume_finish(cluster, tmp_path, capsys):
    """The whole preemption cycle on a real Slurm: signal, checkpoint, exit 75, requeue, resume, finish."""
    t0 = time.monotonic()
    run = tmp_path / "run"
    job_id = submit(run)
    assert capsys.readouterr().out.strip() == job_id  # the id is printed, and recorded in the run dir
    wait_for("step 8 of the first start", lambda: len(steps(run)) >= 8, 60, cluster, run)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], check=True)  # as Slurm before a time limit
    assert wait_for("the job to finish", lambda: finished(job_id), 90, cluster, run) == "COMPLETED"

    info = job(job_id)
    assert info["Restarts"] == "1" and info["ExitCode"] == "0:0"
    records = steps(run)
    assert [r["step"] for r in records] == list(range(STEPS))  # every step exactly once across the restart
    assert all(r["world"] == 2 for r in records)
    first = [r["step"] for r in records if r["restart"] == 0]
    second = [r["step"] for r in records if r["restart"] == 1]
    assert first and second and second[0] == first[-1] + 1
    batch = (run / f"slurm-{job_id}.out").read_text()
    assert "caught USR1" in batch and "rank exit codes: 75" in batch and f"requeueing job {job_id}" in batch
    assert "restart 1/20" in batch and "finished" in batch
    for rank in (0, 1):
        log = (run / "rank-logs" / f"rank-{rank}.log").read_text()
        assert "resumed from step 0" in log and f"resumed from step {second[0]}" in log
        assert log.count("got SIGUSR1") == 1  # delivered once, not once per process layer
        assert f"exiting 75" in log and "finished 30 steps" in log
    assert (run / "checkpoints" / "newest").read_text().strip() == f"step-{STEPS}"

    assert cli.main(["status", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"job       {job_id}" in out and "state     COMPLETED" in out and "restarts  1" in out
    assert f"last logged step   {STEPS - 1}" in out
    assert cli.main(["logs", str(run), "-n", "1"]) == 0
    assert capsys.readouterr().out.strip() == "finished"
    assert cli.main(["logs", str(run), "--rank", "1", "-n", "1"]) == 0
    assert capsys.readouterr().out.strip() == "==== rank 1 exited with 0"
    print(f"preempt/requeue/resume cycle: {time.monotonic() - t0:.1f} s", file=sys.stderr)


def test_diverged_and_restart_limit_are_not_requeued(cluster, tmp_path):
    diverged, limited = tmp_path / "diverged", tmp_path / "limited"
    diverged_id = submit(diverged, "--diverge-at", "3")
    limited_id = submit(limited, extra=("--max-restarts", "0"))
    wait_for("the second job's step 3", lambda: len(steps(limited)) >= 3, 60, cluster, limited)
    subprocess.run(["scancel", "--signal=USR1", "--batch", limited_id], check=True)
    for job_id, run in ((diverged_id, diverged), (limited_id, limited)):
        wait_for(f"job {job_id} to end", lambda: finished(job_id), 60, cluster, run)
    info = job(diverged_id)
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("FAILED", "76:0", "0")
    assert "diverged (76): not requeueing" in (diverged / f"slurm-{diverged_id}.out").read_text()
    info = job(limited_id)
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("FAILED", "75:0", "0")
    assert "reached the limit 0: not requeueing" in (limited / f"slurm-{limited_id}.out").read_text()


def test_cancel_and_bad_input_against_the_cluster(cluster, tmp_path, capsys):
    run = tmp_path / "cancel"
    job_id = submit(run, "--step-time", "5")
    wait_for("the job to run", lambda: job(job_id)["JobState"] == "RUNNING", 30, cluster, run)
    assert cli.main(["status", str(run)]) == 0
    assert "state     RUNNING" in capsys.readouterr().out
    assert cli.main(["cancel", str(run)]) == 0
    assert capsys.readouterr().out.strip() == f"cancelled job {job_id}"
    assert wait_for("the cancel", lambda: finished(job_id), 30, cluster, run) == "CANCELLED"

    before = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout
    bad = tmp_path / "bad"
    for extra, message in [(("--partition", "nope"), "unknown partition 'nope' (this cluster has: debug)"),
                           (("--time", "1:2:3:4"), "bad time limit '1:2:3:4'")]:
        with pytest.raises(SystemExit) as exc:
            cli.main(["slurm", "--nodes", "1", "--gpus-per-node", "0", "--nproc-per-node", "1", *extra,
                      "--output-dir", str(bad), "--module", "standin_trainer", "train", str(bad), "1"])
        assert exc.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["slurm", "--nodes", "1", "--gpus-per-node", "1", "train", str(tmp_path / "missing.yaml")])
    assert "not found" in capsys.readouterr().err
    assert not bad.exists()
    assert subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout == before


# ---- the real trainers at a tiny size, through the same cycle ----------------------------------------

ROOT = TESTS.parent
REAL_STEPS = 40
COMMON = ["vae.channels=8", "data.shuffle_buffer=4", "optim.warmup=2", "run.log_every=1", "run.save_every=5"]
DIT = ["model.depth=2", "model.width=48", "model.heads=4", "data.tokens_per_batch=600"]


def _sora(*args: str, cwd: Path) -> None:
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "sora.cli", *args], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, f"sora {args[0]} failed:\n{r.stderr[-3000:]}"


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory) -> Path:
    """16 synthetic clips and a 1-step VAE with 8 channels: enough for the DiT to train on."""
    root = tmp_path_factory.mktemp("real")
    _sora("synth", "--out", str(root / "data"), "--clips", "16", "--heldout", "2", "--seed", "5", cwd=root)
    _sora("train-vae", str(ROOT / "configs" / "demo-vae.yaml"), f"data.path={root / 'data'}",
          f"run.dir={root / 'vae'}", "train.steps=1", "vae.channels=8", "data.shuffle_buffer=4", cwd=root)
    return root


@pytest.mark.parametrize("command, config, args, weights", [
    ("train", "demo.yaml", DIT, ["final/model.safetensors", "final/ema.safetensors"]),
    ("train-vae", "demo-vae.yaml", ["train.zero_stage=2"], ["vae.safetensors"]),
])
def test_real_trainer_preempt_requeue_resume_finish(cluster, tiny_world, capsys, command, config, args, weights):
    """`sora train` / `sora train-vae` (tiny model, tiny data), 2 ranks on one node through `sora-launch
    slurm`: USR1 mid-run -> the trainer checkpoints and exits 75 (through launcher.rank and the batch
    script) -> requeued -> the second start resumes from that checkpoint -> finishes, every step logged once."""
    t0 = time.monotonic()
    run = tiny_world / command
    argv = ["slurm", "--nodes", "1", "--gpus-per-node", "0", "--nproc-per-node", "2", "--partition", "debug",
            "--time", "10:00", "--signal-seconds", "60", "--job-name", "sora-real", "--python", sys.executable,
            "--env", f"PYTHONPATH={ROOT}", "--env", "OMP_NUM_THREADS=1",
            "--", command, str(ROOT / "configs" / config), f"data.path={tiny_world / 'data'}",
            f"vae.run={tiny_world / 'vae'}", f"run.dir={run}", f"train.steps={REAL_STEPS}", *COMMON, *args]
    assert cli.main(argv) == 0  # no --output-dir: the run directory (run.dir=) holds the job's files
    job_id = capsys.readouterr().out.strip()
    assert (run / "slurm_job_id").read_text().strip() == job_id

    wait_for("step 5 of the first start", lambda: len(steps(run)) >= 5, 180, cluster, run)
    newest_path = run / "checkpoints" / "newest"
    before = newest_path.read_text().strip() if newest_path.exists() else None  # a periodic one, or none yet
    subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], check=True)  # as Slurm before a time limit

    # Between the two starts: the first one's own record of how it ended, and the checkpoint it left.
    wait_for("the requeue", lambda: job(job_id)["Restarts"] == "1", 90, cluster, run)
    first_exit = json.loads((run / "exit_status.json").read_text())
    first_steps = [r["step"] for r in steps(run)]
    preempted_at = first_steps[-1]
    assert first_exit["code"] == 75, first_exit  # sora/train/exit_codes.py PREEMPTED
    assert f"checkpointed step {preempted_at} after SIGUSR1" in first_exit["message"], first_exit
    assert preempted_at < REAL_STEPS - 1, "the first start finished before the signal: the test proves nothing"
    assert newest_path.read_text().strip() == f"step{preempted_at:08d}"
    assert before is None or int(before.removeprefix("step")) <= preempted_at

    assert wait_for("the job to finish", lambda: finished(job_id), 180, cluster, run) == "COMPLETED"
    info = job(job_id)
    assert info["Restarts"] == "1" and info["ExitCode"] == "0:0"
    batch = (run / f"slurm-{job_id}.out").read_text()
    assert "caught USR1" in batch and "rank exit codes: 75" in batch and f"requeueing job {job_id}" in batch
    assert "restart 1/20" in batch and "rank exit codes: 0" in batch and "finished" in batch
    for rank in (0, 1):  # the trainer's 75 reached launcher.rank's record on both ranks, then 0
        log = (run / "rank-logs" / f"rank-{rank}.log").read_text()
        assert log.count(f"==== rank {rank} exited with 75") == 1, log[-3000:]
        assert log.count(f"==== rank {rank} exited with 0") == 1, log[-3000:]
        assert log.index("exited with 75") < log.index("exited with 0")
        assert f"checkpointed step {preempted_at} after SIGUSR1" in log and "(exit 75)" in log
    log0 = (run / "rank-logs" / "rank-0.log").read_text()
    assert log0.count("resumed from") == 1
    assert f"resumed from {run / 'checkpoints'} at step {preempted_at + 1} " in log0

    assert json.loads((run / "exit_status.json").read_text())["code"] == 0
    assert all((run / w).is_file() for w in weights)
    assert [r["step"] for r in steps(run)] == list(range(REAL_STEPS))  # every step exactly once
    assert cli.main(["status", str(run)]) == 0
    out = capsys.readouterr().out
    assert "state     COMPLETED" in out and "restarts  1" in out and f"last logged step   {REAL_STEPS - 1}" in out
    print(f"real `sora {command}` preempt/requeue/resume cycle: {time.monotonic() - t0:.1f} s "
          f"(preempted at step {preempted_at})", file=sys.stderr)
