"""The csrc/ kernels (sora._C) against eager torch on the demo's packed shapes: 3-D RoPE (DiT-T:
6 heads x 32, fp32) and packed patchify/unpatchify (4 latent channels, patch 1x2x2), forward and
forward+backward through each backend's autograd.Function. Correctness is checked before timing.

    python benchmarks/csrc_ops.py [--threads 1] [--device cpu|cuda] [--out benchmarks/results]

Writes csrc_<device>.json. On CUDA the `cuda` backend is compared with torch (and triton when
registered); the fraction of copy bandwidth is GB/s moved / a device copy timed in the same run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench, environment, write_json  # noqa: E402

from sora.ops import _ext  # noqa: E402
from sora.ops.patchify import PATCHIFY_IMPLEMENTATIONS, UNPATCHIFY_IMPLEMENTATIONS  # noqa: E402
from sora.ops.rope import IMPLEMENTATIONS as ROPE  # noqa: E402

# One demo micro-batch (tokens_per_batch 1024): 9-frame clips -> 5 latent frames, 32..64 px -> 8..16
# latent px -> 4..8 tokens a side after the 2x2 patch; images are T' = 1.
DEMO_GRIDS = [(5, 8, 8), (5, 6, 8), (1, 8, 8), (5, 4, 8), (1, 6, 8), (5, 4, 4), (1, 4, 6)]
SCALES = {"demo": DEMO_GRIDS, "demo_x16": DEMO_GRIDS * 16}


def packing(grids, device):
    grid = torch.tensor(grids, dtype=torch.int32, device=device)
    cu = torch.zeros(len(grids) + 1, dtype=torch.int32, device=device)
    cu[1:] = grid.prod(1).cumsum(0)
    return cu, grid


def run(device: str, dtype: torch.dtype) -> list[dict]:
    kernel = "cpp" if device == "cpu" else "cuda"
    rows = []
    for scale, grids in SCALES.items():
        cu, grid = packing(grids, device)
        n = int(cu[-1])
        heads, sections, theta = 6, (8, 12, 12), 100.0
        c, patch = 4, (1, 2, 2)
        p = c * 4
        cases = {
            "rope": (ROPE, lambda: torch.randn(n, heads, sum(sections), device=device, dtype=dtype),
                     lambda f, x: f(x, cu, grid, sections, theta), n * heads * sum(sections)),
            "patchify": (PATCHIFY_IMPLEMENTATIONS, lambda: torch.randn(n * p, device=device, dtype=dtype),
                         lambda f, x: f(x, cu, grid, patch, c), n * p),
            "unpatchify": (UNPATCHIFY_IMPLEMENTATIONS, lambda: torch.randn(n, p, device=device, dtype=dtype),
                           lambda f, x: f(x, cu, grid, patch, c), n * p),
        }
        for op, (impls, make, call, numel) in cases.items():
            x = make().requires_grad_()
            g = None
            ref = call(impls["torch"], x)
            g = torch.randn_like(ref)
            timings = {}
            for backend in ("torch", kernel, "triton"):
                f = impls.get(backend)
                if f is None or (backend == "triton" and device == "cpu"):
                    continue
                out = call(f, x)
                torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
                fwd = bench(lambda: call(f, x.detach()), device, warmup=5, reps=50, min_time_s=0.5)
                fb = bench(lambda: torch.autograd.grad(call(f, x), x, g), device, warmup=5, reps=50, min_time_s=0.5)
                gbs = 2 * numel * x.element_size() / (fwd["ms"] * 1e-3) / 1e9
                timings[backend] = {"fwd_ms": fwd["ms"], "fwd_bwd_ms": fb["ms"], "fwd_GBps": gbs}
            row = {"op": op, "scale": scale, "tokens": n, "dtype": str(dtype).replace("torch.", ""),
                   "backends": timings}
            if kernel in timings:
                row[f"speedup_{kernel}_vs_torch_fwd"] = timings["torch"]["fwd_ms"] / timings[kernel]["fwd_ms"]
                row[f"speedup_{kernel}_vs_torch_fwd_bwd"] = timings["torch"]["fwd_bwd_ms"] / timings[kernel]["fwd_bwd_ms"]
            rows.append(row)
            print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items() if k != "backends"},
                  {b: {k: round(v, 4) for k, v in t.items()} for b, t in timings.items()})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not _ext.AVAILABLE:
        raise SystemExit(f"sora._C is not built ({_ext.REASON})")
    dtypes = [torch.float32] if args.device == "cpu" else [torch.bfloat16, torch.float32]
    result = {"env": environment(args.device), "rows": [r for d in dtypes for r in run(args.device, d)]}
    if args.device.startswith("cuda"):
        big = torch.empty(1 << 28, dtype=torch.uint8, device=args.device)
        copy = bench(lambda: big.clone(), args.device)
        result["copy_GBps"] = 2 * big.numel() / (copy["ms"] * 1e-3) / 1e9
    write_json(Path(args.out) / f"csrc_{args.device}.json", result)


if __name__ == "__main__":
    main()
