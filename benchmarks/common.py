"""Shared by the benchmarks: environment record, peaks measured in the same run, timing, output."""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {model}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def git_commit() -> str | None:
    """This checkout's commit, with "+dirty" when tracked files differ from it; None outside git."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "")


def environment(device: str) -> dict:
    def version(mod):
        try:
            return __import__(mod).__version__
        except Exception:  # noqa: BLE001 - absent is a fact to record
            return None

    return {"device": device_name(device), "device_kind": "cuda" if device.startswith("cuda") else "cpu",
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "host": platform.node(),
            "commit": git_commit(),
            "python": platform.python_version(), "torch": torch.__version__, "triton": version("triton"),
            "deepspeed": version("deepspeed"), "numpy": version("numpy"),
            "cuda": torch.version.cuda if device.startswith("cuda") else None,
            "loadavg_1m_at_start": os.getloadavg()[0]}   # other jobs on a shared machine make timings noisy


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench(fn, device: str, warmup: int = 3, reps: int = 10, min_time_s: float = 0.0) -> dict:
    """Median milliseconds of fn(). GPU: triton.testing.do_bench (CUDA events, cache flushed);
    CPU: wall clock around each call after `warmup` calls."""
    if device.startswith("cuda"):
        try:
            from triton.testing import do_bench

            ms = do_bench(fn, warmup=25, rep=100, return_mode="median")
            return {"ms": float(ms), "method": "triton.testing.do_bench median"}
        except ImportError:
            pass
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    start = time.perf_counter()
    while len(times) < reps or time.perf_counter() - start < min_time_s:
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return {"ms": 1e3 * statistics.median(times), "method": f"wall clock median of {len(times)}",
            "ms_min": 1e3 * min(times), "ms_max": 1e3 * max(times)}


def measure_peaks(device: str, quick: bool) -> dict:
    """A large matmul (bf16 on GPU, fp32 on CPU) and a large device copy, timed here and now."""
    cuda = device.startswith("cuda")
    n = 8192 if cuda else (1024 if quick else 2048)
    dtype = torch.bfloat16 if cuda else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    mm = bench(lambda: a @ b, device, warmup=2, reps=5 if quick else 10)
    numel = (1 << 28 if cuda else (1 << 23 if quick else 1 << 24))   # 512 MiB bf16 on GPU; 32/64 MiB fp32 on CPU
    src = torch.empty(numel, device=device, dtype=dtype).uniform_()
    dst = torch.empty_like(src)
    cp = bench(lambda: dst.copy_(src), device, warmup=2, reps=5 if quick else 10)
    nbytes = 2 * src.numel() * src.element_size()
    return {"matmul_tflops": 2 * n ** 3 / (mm["ms"] * 1e-3) / 1e12, "matmul": f"{n}x{n}x{n} {str(dtype)[6:]}",
            "copy_gbps": nbytes / (cp["ms"] * 1e-3) / 1e9, "copy": f"{nbytes / 2 ** 20:.0f} MiB read+write {str(dtype)[6:]}",
            "timing": mm["method"]}


def write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=str) + "\n")


def pyplot():
    """matplotlib's pyplot with a non-interactive backend, or None (plots are optional:
    pip install 'sora[bench]')."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        print("matplotlib is not installed: skipping the PNG plot (pip install -e '.[bench]')")
        return None


def write_outputs(out_dir, stem: str, result: dict, markdown, plot) -> None:
    """OUT/STEM.json, .md (markdown(result)) and .png (plot(result, path)), then say where."""
    from pathlib import Path

    out = Path(out_dir)
    write_json(out / f"{stem}.json", result)
    (out / f"{stem}.md").write_text(markdown(result) + "\n")
    plot(result, out / f"{stem}.png")
    print(f"wrote {out / stem}.json/.md/.png")
