"""Kernel microbenchmarks: every op x backend x shape, correctness checked before timing.

    python benchmarks/kernel_ops.py --quick                    # CPU, small shapes (< 3 min)
    python benchmarks/kernel_ops.py --device cuda --out DIR    # GPU, realistic shapes

Backends are discovered from the `*IMPLEMENTATIONS` dicts of the modules in `sora/ops/`, so a new
backend (triton in kernels/, cpp/cuda in csrc/) shows up here without touching this file; an op
with no input builder below is listed as skipped. Each backend's forward output and gradients are
compared with the plain-torch reference on the same inputs; only a backend that agrees is timed.
Forward and forward+backward are timed (median; CUDA events via triton.testing.do_bench on GPU,
wall clock on CPU). Attention reports TFLOP/s (FlashAttention's convention: forward 4*s^2*h*d per
sample, backward 2.5x forward); the memory-bound ops report GB/s (bytes each must read + write,
backward counted as the same traffic again). Both are also given as fractions of a large matmul
and a large copy timed in the same run. Writes kernels_<device>.json, .md and .png.
"""
from __future__ import annotations

import argparse
import importlib
import math
import os
import pkgutil
import sys
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench, environment, measure_peaks, pyplot, write_outputs  # noqa: E402

import sora.ops  # noqa: E402

# ---------------------------------------------------------------- discovery


def discover() -> dict[str, dict]:
    """{op: {backend: callable or None}} from every `*IMPLEMENTATIONS` dict in sora/ops."""
    ops = {}
    for info in pkgutil.iter_modules(sora.ops.__path__):
        if info.name.startswith("_"):
            continue
        try:
            mod = importlib.import_module(f"sora.ops.{info.name}")
        except Exception as e:  # noqa: BLE001 - a broken module is reported, not fatal
            ops[info.name] = {"_import_error": repr(e)}
            continue
        for attr, val in vars(mod).items():
            if attr.endswith("IMPLEMENTATIONS") and isinstance(val, dict):
                prefix = attr[: -len("IMPLEMENTATIONS")].rstrip("_").lower()
                ops[prefix or info.name] = dict(val)
    return ops


# ---------------------------------------------------------------- inputs per op

def _packing(seqlens, device, grid_hw=None):
    cu = torch.tensor([0] + list(torch.tensor(seqlens).cumsum(0).tolist()), dtype=torch.int32, device=device)
    grids = []
    for s in seqlens:   # a (t, h, w) grid with exactly s tokens: h*w a divisor near sqrt
        h = max(d for d in range(1, int(math.isqrt(s)) + 1) if s % d == 0)
        grids.append((1, h, s // h) if grid_hw is None else grid_hw)
    return cu, torch.tensor(grids, dtype=torch.int32, device=device)


def attention_case(seqlens, heads, head_dim, dtype, device):
    n = sum(seqlens)
    cu, _ = _packing(seqlens, device)
    q, k, v = (torch.randn(n, heads, head_dim, device=device, dtype=dtype) for _ in range(3))
    flops = sum(4 * s * s * heads * head_dim for s in seqlens)
    return {"args": (q, k, v, cu, cu, max(seqlens), max(seqlens)), "grad_args": (0, 1, 2),
            "flops_fwd": flops, "flops_bwd": int(2.5 * flops),
            "bytes_fwd": 4 * n * heads * head_dim * q.element_size(),
            "label": f"{len(seqlens)}x{'/'.join(map(str, sorted(set(seqlens))))} tok, {heads}h x {head_dim}"}


def rope_case(seqlens, heads, head_dim, dtype, device):
    from sora.ops.rope import rope_sections

    cu, grid = _packing(seqlens, device)
    x = torch.randn(sum(seqlens), heads, head_dim, device=device, dtype=dtype)
    return {"args": (x, cu, grid, rope_sections(head_dim), 10000.0), "grad_args": (0,),
            "bytes_fwd": 2 * x.numel() * x.element_size(),
            "label": f"{len(seqlens)}x{seqlens[0]} tok, {heads}h x {head_dim}"}


def adaln_case(seqlens, width, dtype, device):
    cu, _ = _packing(seqlens, device)
    b = len(seqlens)
    x = torch.randn(sum(seqlens), width, device=device, dtype=dtype)
    shift, scale = (0.1 * torch.randn(b, width, device=device, dtype=dtype) for _ in range(2))
    return {"args": (x, shift, scale, cu), "grad_args": (0, 1, 2),
            "bytes_fwd": 2 * x.numel() * x.element_size(), "label": f"{len(seqlens)}x{seqlens[0]} tok x {width}"}


def patch_case(seqlens_grid, channels, patch, dtype, device, inverse):
    grids = torch.tensor(seqlens_grid, dtype=torch.int32, device=device)
    lens = grids.prod(1)
    cu = torch.zeros(len(seqlens_grid) + 1, dtype=torch.int32, device=device)
    cu[1:] = lens.cumsum(0)
    p = channels * math.prod(patch)
    n = int(cu[-1])
    x = torch.randn(n, p, device=device, dtype=dtype) if inverse else torch.randn(n * p, device=device, dtype=dtype)
    return {"args": (x, cu, grids, tuple(patch), channels), "grad_args": (0,),
            "bytes_fwd": 2 * x.numel() * x.element_size(), "label": f"{n} tok x {p}"}


def cases(op: str, device: str, quick: bool, dtype):
    cuda = device.startswith("cuda")
    if op == "attention":
        shapes = ([[256] * 4, [1024]] if quick else [[512] * 8, [2048, 1024, 512, 512]]) if not cuda else \
            [[1024] * 8, [8192], [2048] * 4 + [4096] * 2, [32768]]
        h, d = (4, 32) if not cuda else (12, 128)
        return [attention_case(s, h, d, dtype, device) for s in shapes]
    if op == "rope":
        shapes = ([[1024] * 2] if quick else [[1024] * 4, [4096]]) if not cuda else [[8192] * 4, [32768]]
        h, d = (4, 32) if not cuda else (12, 128)
        return [rope_case(s, h, d, dtype, device) for s in shapes]
    if op == "adaln":
        shapes = ([[512] * 4] if quick else [[512] * 8, [4096]]) if not cuda else [[8192] * 4, [32768]]
        w = 256 if not cuda else 1536
        return [adaln_case(s, w, dtype, device) for s in shapes]
    if op in ("patchify", "unpatchify"):
        grids = ([[5, 16, 16], [3, 8, 24]] if not cuda else [[25, 30, 53], [1, 64, 64], [13, 45, 80]])
        return [patch_case(grids, 4 if not cuda else 16, (1, 2, 2), dtype, device, op == "unpatchify")]
    return None


# ---------------------------------------------------------------- check + time

def _run(fn, case, grad_out=None):
    args = [a.detach().clone().requires_grad_(i in case["grad_args"]) if isinstance(a, torch.Tensor) and a.is_floating_point()
            else a for i, a in enumerate(case["args"])]
    out = fn(*args)
    if grad_out is None:
        return out, args
    out.backward(grad_out)
    return out, [args[i].grad for i in case["grad_args"]]


def check(fn, ref, case, dtype) -> dict:
    out = ref(*case["args"])
    g = torch.randn_like(out)
    ref_out, ref_grads = _run(ref, case, g)
    got_out, got_grads = _run(fn, case, g)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    errs = {}
    for name, a, b in [("out", got_out, ref_out)] + [(f"grad{i}", x, y) for i, x, y in zip(case["grad_args"], got_grads, ref_grads)]:
        scale = b.detach().abs().max().clamp(min=1e-6)
        errs[name] = float(((a.detach().float() - b.detach().float()).abs().max() / scale.float()))
    return {"max_rel_err": errs, "tolerance": tol, "ok": all(e <= tol for e in errs.values())}


def time_case(fn, case, device, quick) -> dict:
    args = case["args"]
    fwd = bench(lambda: fn(*args), device, reps=5 if quick else 20)
    leaf = [a.detach().clone().requires_grad_(i in case["grad_args"]) if isinstance(a, torch.Tensor) and a.is_floating_point()
            else a for i, a in enumerate(args)]
    g = torch.randn_like(fn(*args))

    def fwd_bwd():
        for i in case["grad_args"]:
            leaf[i].grad = None
        fn(*leaf).backward(g)

    fb = bench(fwd_bwd, device, reps=5 if quick else 20)
    return {"fwd_ms": fwd["ms"], "fwd_bwd_ms": fb["ms"], "timing": fwd["method"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="float32 | bfloat16 (default: bf16 on GPU, fp32 on CPU)")
    ap.add_argument("--quick", action="store_true", help="smallest shapes, fewest repetitions")
    ap.add_argument("--ops", default=None, help="comma-separated subset of ops")
    ap.add_argument("--backends", default=None, help="comma-separated subset of backends")
    ap.add_argument("--out", default="benchmarks/results")
    a = ap.parse_args(argv)
    device = a.device
    dtype = getattr(torch, a.dtype) if a.dtype else (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    torch.manual_seed(0)
    env = environment(device)
    peaks = measure_peaks(device, a.quick)
    print(f"{env['device']}: peak matmul {peaks['matmul_tflops']:.3f} TFLOP/s ({peaks['matmul']}), "
          f"copy {peaks['copy_gbps']:.1f} GB/s ({peaks['copy']})")
    rows, skipped = [], []
    for op, impls in sorted(discover().items()):
        if a.ops and op not in a.ops.split(","):
            continue
        if "_import_error" in impls:
            skipped.append({"op": op, "why": f"import failed: {impls['_import_error']}"})
            continue
        ref = impls.get("torch")
        made = cases(op, device, a.quick, dtype) if ref is not None else None
        if made is None:
            skipped.append({"op": op, "backends": sorted(impls), "why": "no input builder in benchmarks/kernel_ops.py"
                            if ref is not None else "no torch reference"})
            continue
        for backend, fn in sorted(impls.items()):
            if a.backends and backend not in a.backends.split(","):
                continue
            if fn is None:
                skipped.append({"op": op, "backend": backend, "why": "not available here"})
                continue
            if backend == "triton" and not device.startswith("cuda") and os.environ.get("TRITON_INTERPRET") != "1":
                skipped.append({"op": op, "backend": backend, "why": "Triton needs a GPU (or TRITON_INTERPRET=1, not a timing)"})
                continue
            for case in made:
                row = {"op": op, "backend": backend, "shape": case["label"], "dtype": str(dtype)[6:]}
                try:
                    row["check"] = check(fn, ref, case, dtype)
                    if not row["check"]["ok"]:
                        row["error"] = "disagrees with the torch reference: not timed"
                    else:
                        row.update(time_case(fn, case, device, a.quick))
                        if "flops_fwd" in case:
                            row["fwd_tflops"] = case["flops_fwd"] / (row["fwd_ms"] * 1e-3) / 1e12
                            row["fwd_bwd_tflops"] = (case["flops_fwd"] + case["flops_bwd"]) / (row["fwd_bwd_ms"] * 1e-3) / 1e12
                            row["fwd_frac_peak"] = row["fwd_tflops"] / peaks["matmul_tflops"]
                            row["fwd_bwd_frac_peak"] = row["fwd_bwd_tflops"] / peaks["matmul_tflops"]
                        row["fwd_gbps"] = case["bytes_fwd"] / (row["fwd_ms"] * 1e-3) / 1e9
                        row["fwd_bwd_gbps"] = 2 * case["bytes_fwd"] / (row["fwd_bwd_ms"] * 1e-3) / 1e9
                        row["fwd_frac_copy"] = row["fwd_gbps"] / peaks["copy_gbps"]
                except Exception as e:  # noqa: BLE001 - one backend failing must not hide the rest
                    row["error"] = f"{type(e).__name__}: {e}"
                    traceback.print_exc(limit=2)
                rows.append(row)
                print(_line(row))
    result = {"env": env, "peaks": peaks, "dtype": str(dtype)[6:], "quick": a.quick, "results": rows, "skipped": skipped}
    write_outputs(a.out, f"kernels_{env['device_kind']}", result, markdown, plot)
    return result


def _line(r):
    if "error" in r:
        return f"{r['op']:>10} {r['backend']:>8} {r['shape']:<36} ERROR {r['error']}"
    perf = (f"{r['fwd_tflops']:.3f}/{r['fwd_bwd_tflops']:.3f} TFLOP/s" if "fwd_tflops" in r
            else f"{r['fwd_gbps']:.2f}/{r['fwd_bwd_gbps']:.2f} GB/s")
    return f"{r['op']:>10} {r['backend']:>8} {r['shape']:<36} fwd {r['fwd_ms']:.3f} ms, fwd+bwd {r['fwd_bwd_ms']:.3f} ms, {perf}"


def markdown(res: dict) -> str:
    p = res["peaks"]
    lines = [f"Device: {res['env']['device']}; {res['env']['date']}; torch {res['env']['torch']}, "
             f"triton {res['env']['triton']}, deepspeed {res['env']['deepspeed']}; dtype {res['dtype']}.",
             f"Peaks measured in this run: matmul {p['matmul_tflops']:.3f} TFLOP/s ({p['matmul']}), "
             f"copy {p['copy_gbps']:.1f} GB/s ({p['copy']}). Timing: {p['timing']}.", "",
             "| op | backend | shape | fwd ms | fwd+bwd ms | fwd | fwd+bwd | fwd / peak |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in res["results"]:
        if "error" in r:
            lines.append(f"| {r['op']} | {r['backend']} | {r['shape']} | — | — | error: {r['error'][:60]} | | |")
        elif "fwd_tflops" in r:
            lines.append(f"| {r['op']} | {r['backend']} | {r['shape']} | {r['fwd_ms']:.3f} | {r['fwd_bwd_ms']:.3f} | "
                         f"{r['fwd_tflops']:.3f} TFLOP/s | {r['fwd_bwd_tflops']:.3f} TFLOP/s | {r['fwd_frac_peak']:.1%} of matmul |")
        else:
            lines.append(f"| {r['op']} | {r['backend']} | {r['shape']} | {r['fwd_ms']:.3f} | {r['fwd_bwd_ms']:.3f} | "
                         f"{r['fwd_gbps']:.2f} GB/s | {r['fwd_bwd_gbps']:.2f} GB/s | {r['fwd_frac_copy']:.1%} of copy |")
    if res["skipped"]:
        lines += ["", "Not run: " + "; ".join(f"{s['op']}/{s.get('backend', '*')} ({s['why']})" for s in res["skipped"])]
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    plt = pyplot()
    rows = [r for r in res["results"] if "error" not in r]
    if plt is None or not rows:
        return
    ops = sorted({r["op"] for r in rows})
    fig, axes = plt.subplots(1, len(ops), figsize=(4.2 * len(ops), 4), squeeze=False)
    for ax, op in zip(axes[0], ops):
        sub = [r for r in rows if r["op"] == op]
        shapes = list(dict.fromkeys(r["shape"] for r in sub))
        compute = "fwd_tflops" in sub[0]
        key, unit, peak = (("fwd_bwd_tflops", "TFLOP/s", res["peaks"]["matmul_tflops"]) if compute
                           else ("fwd_bwd_gbps", "GB/s", res["peaks"]["copy_gbps"]))
        for backend in sorted({r["backend"] for r in sub}):
            ys = [next((r[key] for r in sub if r["backend"] == backend and r["shape"] == s), float("nan")) for s in shapes]
            ax.plot(range(len(shapes)), ys, marker="o", label=backend)
        ax.axhline(peak, color="k", ls="--", lw=1, label=f"measured {'matmul' if compute else 'copy'} peak")
        ax.set_xticks(range(len(shapes)))
        ax.set_xticklabels(shapes, rotation=20, ha="right", fontsize=7)
        ax.set_title(f"{op} (fwd+bwd)")
        ax.set_ylabel(unit)
        ax.set_xlabel("shape")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
    fig.suptitle(f"{res['env']['device']} — {res['dtype']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
