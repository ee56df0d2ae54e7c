"""`sora train-vae` resumes exactly, through the real command line on a tiny run (CPU, fp32), with
every loss on (perceptual; the discriminator joins mid-run, so its engine is in the checkpoints).

One run is interrupted twice: SIGKILL after its checkpoint of step 3, a restart, then SIGUSR1
(checkpoint, exit 75: what `sora-launch slurm` requeues on), a second restart to the end. Every
logged number (losses, adversarial terms, held-out PSNR/SSIM) is bitwise that of an uninterrupted
run, and so are the final weights (latent statistics included, read from the clip stream after
the last step).
"""
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.cli_runs import env, exit_status, logged_steps, metrics, newest, sora, vae_args, wait_for

pytestmark = pytest.mark.slow
ALL_LOSSES = ["vae.perceptual_weight=0.1", "vae.adv_weight=0.1", "vae.adv_start=3", "vae.adv_warmup=2",
              "vae.disc_channels=8", "vae.eval_every=3", "vae.eval_clips=2", "run.save_every=2"]
TIMING = {"pixels_per_s", "step_time_s"}


def _start(world, run, steps, stderr=subprocess.DEVNULL):
    return subprocess.Popen([sys.executable, "-m", "sora.cli", *vae_args(world, run, steps, *ALL_LOSSES)],
                            cwd=world, env=env(), stdout=subprocess.DEVNULL, stderr=stderr, text=True)


def test_vae_sigkill_and_sigusr1_then_resume_is_bitwise_identical(world):
    steps = 14
    ref = world / "vae-ref"
    r = sora(*vae_args(world, ref, steps, *ALL_LOSSES), cwd=world)
    assert r.returncode == 0, r.stderr[-3000:]

    run = world / "vae-interrupted"
    proc = _start(world, run, steps)
    wait_for(lambda: newest(run) == "step00000003", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert newest(run) == "step00000003", "the run ended before it could be killed mid-way"
    assert (run / "checkpoints" / "step00000003" / "disc").is_dir()   # D trained at step 3: its state is saved
    assert max(metrics(run)) < steps - 1, "the run got to its end before the kill"

    proc = _start(world, run, steps, stderr=subprocess.PIPE)
    wait_for(lambda: max(metrics(run)) >= 5, proc)       # resumed at 4 and logged step 5
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, err[-3000:]
    assert "resumed from" in err and "at step 4 (clips_taken" in err
    assert "sora train-vae: preempted: checkpointed step" in err
    status = exit_status(run)
    assert status["code"] == 75 and "SIGUSR1" in status["message"]
    stopped = int(newest(run).removeprefix("step"))
    assert 5 <= stopped < steps - 1, stopped

    r = sora(*vae_args(world, run, steps, *ALL_LOSSES), cwd=world)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"at step {stopped + 1} (clips_taken" in r.stderr
    assert exit_status(run)["code"] == 0
    assert logged_steps(run) == list(range(steps))     # steps after a checkpoint were dropped, then relogged
    a, b = metrics(ref), metrics(run)
    for s in range(steps):
        assert set(a[s]) == set(b[s]), s
        assert {k: v for k, v in a[s].items() if k not in TIMING} == {k: v for k, v in b[s].items() if k not in TIMING}, s
    assert "adv_d" in a[3] and "adv_g" in a[4] and "eval_psnr" in a[9]   # both phases, evals after each restart
    ref_w, run_w = load_file(str(ref / "vae.safetensors")), load_file(str(run / "vae.safetensors"))
    assert sorted(ref_w) == sorted(run_w) and "latent_std" in ref_w
    assert all(torch.equal(ref_w[k], run_w[k]) for k in ref_w)
