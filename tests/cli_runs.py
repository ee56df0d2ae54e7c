"""Running `sora` commands as a user would (subprocesses, tiny sizes), for the tests of whole paths:
the shared tiny dataset + VAE (the `world` fixture in conftest.py), run arguments, and readers of
what a run directory holds."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY = ["model.depth=2", "model.width=48", "model.heads=4", "vae.channels=8", "data.tokens_per_batch=600",
        "data.shuffle_buffer=4", "run.log_every=1", "optim.warmup=2"]
VAE_TINY = ["vae.channels=8", "data.shuffle_buffer=4", "run.log_every=1"]


def env(**extra) -> dict:
    return dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **extra)


def sora(*args, cwd, env_=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sora.cli", *args], cwd=cwd, env=env_ or env(),
                          capture_output=True, text=True, timeout=timeout)


def sora_ranks(nproc: int, *args, cwd, timeout=600) -> subprocess.CompletedProcess:
    """`sora-launch local --nproc N ...`: every rank's stderr lands in the result's stdout."""
    return subprocess.run([sys.executable, "-m", "launcher.cli", "local", "--nproc", str(nproc), *args], cwd=cwd,
                          env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)


def make_world(root: Path) -> Path:
    """Tiny dataset + a 2-step VAE under `root`."""
    r = sora("synth", "--out", str(root / "data"), "--clips", "24", "--heldout", "4", "--seed", "5", cwd=root)
    assert r.returncode == 0, r.stderr
    r = sora(*vae_args(root, root / "vae", 2), cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    return root


def dit_args(world, run, steps, *extra) -> list[str]:
    return ["train", f"{ROOT}/configs/demo.yaml", f"data.path={world / 'data'}", f"vae.run={world / 'vae'}",
            f"run.dir={run}", f"train.steps={steps}", *TINY, *extra]


def vae_args(world, run, steps, *extra) -> list[str]:
    return ["train-vae", f"{ROOT}/configs/demo-vae.yaml", f"data.path={world / 'data'}", f"run.dir={run}",
            f"train.steps={steps}", *VAE_TINY, *extra]


def metrics(run) -> dict[int, dict]:
    """step -> the last record logged for it (a resumed run logs its steps again)."""
    out = {}
    for line in (Path(run) / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out[rec["step"]] = rec
    return out


def logged_steps(run) -> list[int]:
    return [json.loads(line)["step"] for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


def logged(run) -> bool:
    p = Path(run) / "metrics.jsonl"
    return p.is_file() and p.stat().st_size > 0


def newest(run) -> str | None:
    p = Path(run) / "checkpoints" / "newest"
    return p.read_text().strip() if p.is_file() else None


def exit_status(run) -> dict:
    return json.loads((Path(run) / "exit_status.json").read_text())


def wait_for(condition, proc, timeout=300) -> None:
    deadline = time.time() + timeout
    while not condition() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)


def random_vae_run(path: Path, *overrides) -> None:
    """A stage-1 VAE run directory (config.yaml + vae.safetensors) of the demo's VAE, 8 channels wide,
    with random weights (torch's current seed): for tests that need a VAE, not a trained one."""
    from sora.config import load_config, save_config
    from sora.train.artifacts import build_vae, save_weights

    cfg = load_config(f"{ROOT}/configs/demo-vae.yaml", [f"run.dir={path}", "vae.channels=8", *overrides])
    save_config(cfg, Path(path) / "config.yaml")
    save_weights(build_vae(cfg).state_dict(), Path(path) / "vae.safetensors")
