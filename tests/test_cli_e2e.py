"""The whole pipeline through the command line on a tiny dataset with bad input mixed in:
synth -> train-vae -> train (DeepSpeed ZeRO-3, 1 rank) -> sample at an unseen size; bad samples
and a truncated shard are skipped and counted in metrics.jsonl; bad configs fail fast."""
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sora(*args, cwd):
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "sora.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def add_bad_shards(data):
    """train-000098.tar: corrupt mp4, json without caption, empty caption, non-UTF-8 json;
    train-000099.tar: a good shard cut in half."""
    members = {
        "bad-0.mp4": b"\x00\x00\x00\x18ftypmp42 definitely not a video",
        "bad-0.json": json.dumps({"caption": "a red circle moving left", "fps": 8}).encode(),
        "bad-1.png": b"\x89PNG\r\n\x1a\n",
        "bad-1.json": json.dumps({"fps": 8}).encode(),
        "bad-2.json": json.dumps({"caption": "   ", "fps": 8}).encode(),
        "bad-3.json": b"\xff\xfe{",
    }
    with tarfile.open(data / "train-000098.tar", "w") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    good = (data / "train-000000.tar").read_bytes()
    (data / "train-000099.tar").write_bytes(good[: len(good) // 2])


def test_pipeline_end_to_end_with_bad_input(tmp_path):
    data = tmp_path / "data"
    r = sora("synth", "--out", str(data), "--clips", "24", "--heldout", "4", "--seed", "3", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    add_bad_shards(data)
    common = [f"data.path={data}", f"vae.run={tmp_path / 'vae'}", "run.log_every=1", "data.shuffle_buffer=4"]
    r = sora("train-vae", f"{ROOT}/configs/demo-vae.yaml", *common, f"run.dir={tmp_path / 'vae'}",
             "train.steps=3", "vae.channels=8", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    r = sora("train", f"{ROOT}/configs/demo.yaml", *common, f"run.dir={tmp_path / 'dit'}", "vae.channels=8",
             "train.steps=4", "run.save_every=2", "model.depth=2", "model.width=48", "model.heads=4",
             "data.tokens_per_batch=600", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "dit"
    assert (run / "config.yaml").is_file() and (run / "final" / "ema.safetensors").is_file()
    assert (run / "checkpoints" / "newest").read_text().strip() == "step00000003"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    for key in ("step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "mfu", "packing_efficiency"):
        assert key in rows[-1]
    # restarting on the same run directory resumes from the newest checkpoint (model, optimizer, EMA)
    r = sora("train", f"{ROOT}/configs/demo.yaml", *common, f"run.dir={run}", "vae.channels=8",
             "train.steps=6", "run.save_every=2", "model.depth=2", "model.width=48", "model.heads=4",
             "data.tokens_per_batch=600", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stderr
    resumed = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert resumed == [0, 1, 2, 3, 4, 5]
    assert (run / "checkpoints" / "newest").read_text().strip() == "step00000005"
    # every bad sample kind was skipped and counted (the VAE run reads the same shards)
    vae_rows = [json.loads(line) for line in (tmp_path / "vae" / "metrics.jsonl").read_text().splitlines()]
    seen = {k for row in rows + vae_rows for k in row if k.startswith("skipped_")}
    assert {"skipped_corrupt_video", "skipped_missing_caption", "skipped_empty_caption"} <= seen, seen
    assert {"skipped_truncated_shard", "skipped_unreadable_shard"} & seen, seen
    # sampling at a size never seen in training, both output formats
    for out in ("a.gif", "a.mp4"):
        r = sora("sample", "--run", str(run), "--prompt", "a red circle moving up", "--frames", "5",
                 "--height", "40", "--width", "72", "--steps", "2", "--out", str(tmp_path / out), cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        assert (tmp_path / out).stat().st_size > 0
    import av
    with av.open(str(tmp_path / "a.mp4")) as c:   # plays at the rate the run trained at (data.fps: 4)
        assert float(c.streams.video[0].average_rate) == 4.0
    # text -> first frame -> clip, and animating a given image (resized and cropped to the size asked)
    from PIL import Image
    Image.fromarray(np.full((50, 30, 3), 200, np.uint8)).save(tmp_path / "first.png")
    for first in ("generate", str(tmp_path / "first.png")):
        r = sora("sample", "--run", str(run), "--prompt", "a red circle moving up", "--frames", "5", "--height", "40",
                 "--width", "24", "--steps", "2", "--first-frame", first, "--out", str(tmp_path / "c.mp4"), cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        assert (tmp_path / "c.mp4").stat().st_size > 0
    # a mode the run never trained is refused (the demo config trains every clip from a given first frame)
    r = sora("sample", "--run", str(run), "--prompt", "x", "--frames", "5", "--height", "40", "--width", "24",
             "--first-frame", "joint", "--out", str(tmp_path / "d.gif"), cwd=tmp_path)
    assert r.returncode == 2 and "first_frame_prob=1" in r.stderr, r.stderr[-2000:]
    # a size the factors do not allow is refused with the flag named
    r = sora("sample", "--run", str(run), "--prompt", "x", "--frames", "4", "--height", "40", "--width", "72",
             "--out", str(tmp_path / "b.gif"), cwd=tmp_path)
    assert r.returncode == 2 and "--frames" in r.stderr


def test_bad_config_fails_fast_naming_the_key(tmp_path):
    r = sora("train", f"{ROOT}/configs/demo.yaml", "model.heads=5", cwd=tmp_path)
    assert r.returncode == 2 and "model.heads" in r.stderr
    r = sora("train-vae", f"{ROOT}/configs/demo-vae.yaml", "data.max_frames=4", cwd=tmp_path)
    assert r.returncode == 2 and "data.max_frames" in r.stderr
    r = sora("train", str(tmp_path / "missing.yaml"), cwd=tmp_path)
    assert r.returncode == 2 and "does not exist" in r.stderr
    assert not any(tmp_path.iterdir())  # nothing was created before the error
    (tmp_path / "bad.yaml").write_text("run: [\n")
    r = sora("train", str(tmp_path / "bad.yaml"), cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"sora train: error: config file '{tmp_path / 'bad.yaml'}' is not valid YAML at line 2, column 1: " in r.stderr
