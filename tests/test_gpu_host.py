"""What `make test` / `make demo` meet on a CUDA host, checked on any machine.

- Triton: on a CUDA host this pytest process compiles the kernels, so the interpreter cases (CPU
  tensors) must not run here: conftest skips them with the reason, and
  test_interpreter_cases_in_a_subprocess runs them in a child pytest with TRITON_INTERPRET=1 and
  no visible GPU. Simulated here with torch.cuda.is_available patched to True.
- The Makefile's environment with a stand-in `nvidia-smi` on PATH: DS_ACCELERATOR=cuda, never empty.
- The training device follows DeepSpeed's accelerator and is cuda:LOCAL_RANK on a GPU rank.
- A tool CI must have (nvcc, Slurm) fails rather than skips there (tests/required_tools.py).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests import conftest
from tests.required_tools import in_ci, missing_tool

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------- Triton mode

def test_triton_mode_decision():
    assert conftest.triton_mode(False, {}) == "interpret"
    assert conftest.triton_mode(False, {"TRITON_INTERPRET": "0"}) == "interpret"   # no GPU: nothing else works
    assert conftest.triton_mode(True, {}) == "compiled"
    assert conftest.triton_mode(True, {"TRITON_INTERPRET": "0"}) == "compiled"
    assert conftest.triton_mode(True, {"TRITON_INTERPRET": "1"}) == "interpret"    # asked for on a GPU host


_AS_ON_A_CUDA_HOST = """
import os, sys
import torch
torch.cuda.is_available = lambda: True          # what conftest sees on a CUDA host
import pytest
rc = pytest.main(sys.argv[1:])
import kernels._common as kc
print("TRITON_INTERPRET=" + os.environ.get("TRITON_INTERPRET", "<unset>"), "INTERPRET=" + str(kc.INTERPRET))
sys.exit(rc)
"""


@pytest.mark.slow
def test_on_a_cuda_host_interpreter_cases_skip_with_the_reason_and_kernels_are_compiled():
    """A pytest process that sees a GPU compiles the kernels and skips, saying why, every case that
    would launch them on CPU tensors (here the bad-input cases and one that launches attention),
    instead of launching a compiled kernel on a CPU tensor."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    r = subprocess.run([sys.executable, "-c", _AS_ON_A_CUDA_HOST, "-q", "-rs", "-p", "no:cacheprovider",
                        "-m", "not gpu", "-k", "bad_input or lse_and_empty_rows", str(ROOT / "tests" / "test_triton_kernels.py")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "TRITON_INTERPRET=<unset> INTERPRET=False" in out, out[-2000:]
    assert " passed" not in out and "failed" not in out, out[-2000:]
    assert "skipped" in out and "run in a child pytest with TRITON_INTERPRET=1" in out, out[-2000:]


def interpreter_child(config) -> tuple[list[str], dict]:
    """The child pytest that runs the interpreter cases on a CUDA host, with the parent's -k / -m."""
    marks = "interpreter and not gpu" + (f" and ({config.option.markexpr})" if config.option.markexpr else "")
    argv = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-m", marks, str(ROOT / "tests")]
    if config.option.keyword:
        argv += ["-k", config.option.keyword]
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT))
    return argv, env


def test_interpreter_child_is_interpreted_and_sees_no_gpu(pytestconfig):
    argv, env = interpreter_child(pytestconfig)
    assert env["TRITON_INTERPRET"] == "1" and env["CUDA_VISIBLE_DEVICES"] == ""
    assert argv[argv.index("-m", 3) + 1].startswith("interpreter and not gpu")


@pytest.mark.skipif(conftest.TRITON_MODE == "interpret",
                    reason="Triton runs interpreted in this process: the interpreter cases run here")
def test_interpreter_cases_in_a_subprocess(pytestconfig):
    argv, env = interpreter_child(pytestconfig)
    r = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    print(r.stdout[-3000:])
    if r.returncode == 5:
        pytest.skip("no interpreter case matches this run's -k / -m")
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]


# -------------------------------------------------------------------------------- the Makefile

def _make_env(tmp_path, with_gpu: bool, **env_extra) -> str:
    """DS_ACCELERATOR as the Makefile exports it to its recipes. PATH is one folder holding only a
    stand-in nvidia-smi (or nothing), so a real driver on this machine does not count."""
    make = shutil.which("make")
    if make is None:
        missing_tool("needs make")
    bin_dir = tmp_path / ("gpu-bin" if with_gpu else "cpu-bin")
    bin_dir.mkdir(exist_ok=True)
    if with_gpu:
        smi = bin_dir / "nvidia-smi"
        smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)'\n")
        smi.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    env.update(PATH=str(bin_dir), **env_extra)
    r = subprocess.run([make, "-s", "-C", str(ROOT), "--eval", 'print-ds-env: ; @echo "$$DS_ACCELERATOR"',
                        "print-ds-env"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_makefile_exports_a_real_ds_accelerator(tmp_path):
    assert _make_env(tmp_path, with_gpu=True) == "cuda"                  # was "" (DeepSpeed rejects it)
    assert _make_env(tmp_path, with_gpu=False) == "cpu"
    assert _make_env(tmp_path, with_gpu=True, DS_ACCELERATOR="") == "cuda"
    assert _make_env(tmp_path, with_gpu=True, DS_ACCELERATOR="cpu") == "cpu"   # the caller's choice is kept


# -------------------------------------------------------------------------- the training device

class _Accelerator:
    def __init__(self, name):
        self.name = name

    def device_name(self, index=None):
        return self.name


@pytest.mark.parametrize("local_rank,count,expect", [("0", 1, "cuda:0"), ("3", 8, "cuda:3"), ("1", 1, "error")])
def test_gpu_rank_trains_on_its_local_device(monkeypatch, local_rank, count, expect):
    import deepspeed.accelerator

    from sora.config import ConfigError
    from sora.parallel.dims import compute_device
    monkeypatch.setattr(deepspeed.accelerator, "get_accelerator", lambda: _Accelerator("cuda"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    if expect == "error":
        with pytest.raises(ConfigError, match="LOCAL_RANK=1 but 1 CUDA device"):
            compute_device()
    else:
        assert compute_device() == torch.device(expect)


def test_training_device_follows_ds_accelerator(monkeypatch):
    """DS_ACCELERATOR=cpu on a GPU host trains on the CPU (gloo), as the test suite does; before, the
    trainer took CUDA whenever torch saw a GPU while DeepSpeed's engine stayed on the CPU."""
    import deepspeed.accelerator

    from sora.config import ConfigError
    from sora.parallel.dims import compute_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(deepspeed.accelerator, "get_accelerator", lambda: _Accelerator("cpu"))
    assert compute_device() == torch.device("cpu")
    monkeypatch.setattr(deepspeed.accelerator, "get_accelerator", lambda: _Accelerator("xpu"))
    with pytest.raises(ConfigError, match="xpu"):
        compute_device()


def test_init_distributed_binds_the_gpu_before_nccl(monkeypatch):
    import deepspeed
    import deepspeed.accelerator
    import torch.distributed as dist

    from sora.parallel import dims
    calls = []
    monkeypatch.setattr(deepspeed.accelerator, "get_accelerator", lambda: _Accelerator("cuda"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", str(d))))
    monkeypatch.setattr(deepspeed, "init_distributed", lambda dist_backend, **kw: calls.append(("init", dist_backend)))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "get_world_size", lambda: 4)
    monkeypatch.setattr(dist, "get_rank", lambda: 2)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "2")
    d = dims.init_distributed()
    assert calls == [("set_device", "cuda:2"), ("init", "nccl")]
    assert (d.world, d.rank) == (4, 2)


# ----------------------------------------------------------------------------- tools CI must have

def test_missing_tool_skips_outside_ci_and_fails_in_ci():
    assert in_ci({"CI": "true"}) and in_ci({"CI": "1"}) and not in_ci({}) and not in_ci({"CI": "false"})
    with pytest.raises(pytest.skip.Exception, match="nvcc not found"):
        missing_tool("nvcc not found", {})
    with pytest.raises(pytest.fail.Exception, match="nvcc not found.*CI is set"):
        missing_tool("nvcc not found", {"CI": "true"})


def test_no_benchmark_script_shadows_a_package():
    """A script's folder is sys.path[0] when it runs: benchmarks/kernels.py made `import kernels`
    find the script, so sora.ops' Triton backend (kernels.flash_attn, ...) failed in every GPU benchmark."""
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert {"sora", "kernels", "launcher"} <= packages
    clashes = [p.name for p in (ROOT / "benchmarks").glob("*.py") if p.stem in packages]
    assert not clashes, f"benchmarks/{clashes} shadow the packages of the same name"


@pytest.mark.slow
def test_gpu_smoke_script_runs(tmp_path):
    """benchmarks/gpu_smoke.py, the first section of benchmarks/gpu_check.sh, at tiny sizes under the
    interpreter: every check runs and passes here, so a GPU loan is not spent on a broken script."""
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_smoke.py"), "--device", "cpu", "--tiny",
                        "--steps", "2", "--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=900)
    import json
    result = json.loads((tmp_path / "smoke.json").read_text())
    failed = [(c["check"], c.get("error")) for c in result["checks"] if not c["ok"]]
    assert r.returncode == 0 and result["all_ok"] and not failed, (failed, r.stdout[-3000:], r.stderr[-3000:])
    names = {c["check"] for c in result["checks"]}
    assert {"attention self causal", "attention cross GQA", "rope q+k triton", "adaln triton", "patch embed",
            "patch unembed", "patchify triton", "dit 2 steps triton", "dit 2 steps auto"} <= names, names


def test_gpu_check_reaches_every_gpu_test_within_its_budget():
    """benchmarks/gpu_check.sh: the GPU tests selected with -m gpu (all of them), no -x (a failure
    must not hide the rest), the smoke section first, and the foreground budgets within the
    deadline, itself under 8 minutes."""
    import re
    script = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    assert subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_check.sh")]).returncode == 0
    sections = re.findall(r"^section (\w+) (\d+) (.*)$", script, re.M)
    names = [name for name, _, _ in sections]
    assert names[:2] == ["env", "smoke"], names
    pytests = [cmd for _, _, cmd in sections if "-m pytest" in cmd]
    assert pytests and all(" -m gpu " in cmd and " -x" not in cmd for cmd in pytests), pytests
    assert any("tests/test_triton_kernels.py" in c for c in pytests) and any("--ignore" in c for c in pytests)
    budget = int(re.search(r"BUDGET_S:-(\d+)", script).group(1))
    assert budget <= 480 and sum(int(limit) for _, limit, _ in sections) <= budget


@pytest.mark.slow
def test_aot_compile_for_hopper_reports_resources(tmp_path):
    """kernels/aot_check.py compiles Triton kernels for sm_90a here (no GPU) and reads registers and
    spills from ptxas: the small kernels only (the attention ones take minutes on this machine)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    out = tmp_path / "aot.json"
    r = subprocess.run([sys.executable, "-m", "kernels.aot_check", "--only", "adaln fwd D=1152", "--json", str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    import json
    rows = json.loads(out.read_text())["rows"]
    assert rows and all(row["ptxas_ok"] and row["registers"] and row["fits"] for row in rows), rows
