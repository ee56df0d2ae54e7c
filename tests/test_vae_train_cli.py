"""`sora train-vae` under DeepSpeed on 2 local ranks (gloo), with every optional loss on: perceptual,
adversarial after a warm-up; held-out PSNR/SSIM and per-reason skip counts land in metrics.jsonl."""
import io
import json
import os
import subprocess
import sys
import tarfile

import pytest
from safetensors.torch import load_file

pytestmark = [pytest.mark.slow, pytest.mark.distributed]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, cwd):
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_train_vae_two_ranks_all_losses(tmp_path):
    data = tmp_path / "data"
    r = run("-m", "sora.cli", "synth", "--out", str(data), "--clips", "16", "--heldout", "4", "--seed", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    with tarfile.open(data / "train-000000.tar") as src, tarfile.open(data / "train-000001.tar", "w") as dst:
        # a second shard (one per rank) that starts with a corrupt clip
        for name, payload in (("bad.json", b'{"caption": "a red circle moving left"}'), ("bad.mp4", b"junk" * 64)):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            dst.addfile(info, io.BytesIO(payload))
        for m in src.getmembers():
            dst.addfile(m, src.extractfile(m))
    r = run("-m", "launcher.cli", "local", "--nproc", "2", "train-vae", f"{ROOT}/configs/demo-vae.yaml",
            f"data.path={data}", f"run.dir={tmp_path / 'vae'}", "train.steps=3", "run.log_every=1",
            "vae.channels=8", "data.tokens_per_batch=512", "data.shuffle_buffer=2", "train.zero_stage=2",
            "vae.perceptual_weight=0.1", "vae.adv_weight=0.1", "vae.adv_start=1", "vae.adv_warmup=2",
            "vae.disc_channels=8", "vae.eval_every=2", "vae.eval_clips=4", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    rows = [json.loads(line) for line in (tmp_path / "vae" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 1, 2]
    assert all(k in rows[0] for k in ("loss", "psnr", "kl", "lr", "grad_norm", "pixels", "perceptual"))
    assert "adv_d" not in rows[0] and rows[1]["adv_factor"] == 0.5 and "adv_d" in rows[1] and "adv_g" in rows[2]
    for row in (rows[2],):                                                  # eval at step 2 (= every 2, and last)
        assert row["eval_clips"] == 4 and 0 < row["eval_ssim"] <= 1 and row["eval_psnr"] > 5
    assert rows[-1]["skipped_corrupt_video"] >= 1                           # read by rank 1, summed over ranks
    state = load_file(str(tmp_path / "vae" / "vae.safetensors"))
    assert "latent_std" in state and not any(k.startswith("disc") for k in state)
