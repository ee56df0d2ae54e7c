"""The GPU's code path end to end, on the CPU: a whole `sora train` step and a `sora sample` with
every model op on a GPU backend.

- model.backend=triton under Triton's interpreter: every Triton kernel the DiT and the hash text
  encoder call on a GPU runs (forward and backward) — counted per launch (tests/kernel_trace.py) —
  and the text encoder's attention goes through the kernel with its own shapes.
- model.backend=flash_attn with a stand-in for flash-attn's `flash_attn_varlen_func`
  (tests/standins/flash_attn) that takes its signature and refuses what it refuses (fp32, int64 or
  strided cu_seqlens, a missing or tensor max_seqlen, ...), in bf16 as a GPU run trains (train.precision
  auto = bf16 there) and samples.
Tiny sizes; the processes see no GPU (CUDA_VISIBLE_DEVICES="") and run DeepSpeed on the CPU.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
STANDINS = ROOT / "tests" / "standins"
TINY = ["model.depth=1", "model.width=32", "model.heads=2", "text.dim=16", "text.layers=1", "text.heads=2",
        "vae.channels=8", "train.steps=1", "run.save_every=1", "run.log_every=1", "data.shuffle_buffer=4",
        "data.tokens_per_batch=600"]
TEXT_HEADS, TEXT_HEAD_DIM = 2, 8          # text.heads, text.dim / text.heads above
DIT_HEADS, DIT_HEAD_DIM = 2, 16


def run(*args, cwd, trace=None, **env_extra):
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT))
    env.update(env_extra)
    cmd = [sys.executable, "-m", "tests.kernel_trace", str(trace), *args] if trace else \
          [sys.executable, "-m", "sora.cli", *args]
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    return r


@pytest.fixture(scope="module")
def data_and_vae(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu_path")
    data = root / "data"
    run("synth", "--out", str(data), "--clips", "12", "--heldout", "2", "--seed", "5", cwd=root)
    run("train-vae", str(ROOT / "configs/demo-vae.yaml"), f"data.path={data}", f"run.dir={root / 'vae'}",
        "train.steps=1", "vae.channels=8", "data.shuffle_buffer=4", "run.log_every=1", cwd=root)
    return root, [f"data.path={data}", f"vae.run={root / 'vae'}"]


SAMPLE = ["--prompt", "a red circle moving left", "--frames", "5", "--height", "32", "--width", "32",
          "--steps", "2", "--device", "cpu"]


def test_train_step_and_sample_on_the_triton_backend(data_and_vae, tmp_path):
    root, common = data_and_vae
    env = {"TRITON_INTERPRET": "1"}
    trace = tmp_path / "train.json"
    run("train", str(ROOT / "configs/demo.yaml"), *common, *TINY, f"run.dir={tmp_path / 'dit'}",
        "model.backend=triton", cwd=root, trace=trace, **env)
    t = json.loads(trace.read_text())
    assert t["backends"]
    for line in t["backends"]:                    # every op with a Triton kernel is served by it
        names = dict(item.split("=") for item in line.removeprefix("kernel backends: ").split(", "))
        names.pop("packing_index", None)          # integer indices: no Triton kernel
        assert set(names.values()) == {"triton"}, line
    launched = set(t["launches"])
    for kernel in ("_fwd_kernel", "_bwd_preprocess", "_bwd_dkdv_kernel", "_bwd_dq_kernel",   # attention
                   "_rope_kernel", "_adaln_fwd", "_adaln_bwd", "_embed_kernel", "_unembed_kernel"):
        assert kernel in launched, f"{kernel} never launched in a training step: {t['launches']}"
    shapes = {(a["q"][1], a["q"][2]) for a in t["attention"]}
    assert (TEXT_HEADS, TEXT_HEAD_DIM) in shapes, f"the text encoder's attention bypassed the kernel: {shapes}"
    assert (DIT_HEADS, DIT_HEAD_DIM) in shapes, shapes
    rows = [json.loads(line) for line in (tmp_path / "dit" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and torch.isfinite(torch.tensor(rows[0]["loss"]))

    trace = tmp_path / "sample.json"
    run("sample", "--run", str(tmp_path / "dit"), *SAMPLE, "--out", str(tmp_path / "a.gif"), cwd=root,
        trace=trace, **env)
    s = json.loads(trace.read_text())
    assert {"_fwd_kernel", "_rope_kernel", "_adaln_fwd", "_embed_kernel", "_unembed_kernel"} <= set(s["launches"]), \
        s["launches"]
    assert (TEXT_HEADS, TEXT_HEAD_DIM) in {(a["q"][1], a["q"][2]) for a in s["attention"]}
    assert (tmp_path / "a.gif").stat().st_size > 0


def test_train_step_and_sample_through_flash_attn_standin(data_and_vae, tmp_path):
    root, common = data_and_vae
    log = tmp_path / "flash_attn_calls.jsonl"
    env = {"PYTHONPATH": f"{ROOT}{os.pathsep}{STANDINS}", "FLASH_ATTN_STANDIN_LOG": str(log)}
    run("train", str(ROOT / "configs/demo.yaml"), *common, *TINY, f"run.dir={tmp_path / 'dit'}",
        "model.backend=flash_attn", "train.precision=bf16", cwd=root, **env)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert {c["dtype"] for c in calls} == {"torch.bfloat16"}
    shapes = {(c["q"][1], c["q"][2]) for c in calls}
    assert {(TEXT_HEADS, TEXT_HEAD_DIM), (DIT_HEADS, DIT_HEAD_DIM)} <= shapes, shapes
    log.unlink()
    run("sample", "--run", str(tmp_path / "dit"), *SAMPLE, "--out", str(tmp_path / "a.gif"), cwd=root, **env)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert calls and {c["dtype"] for c in calls} == {"torch.bfloat16"}
    assert (TEXT_HEADS, TEXT_HEAD_DIM) in {(c["q"][1], c["q"][2]) for c in calls}
