"""VAE encode peak memory against clip length, whole clip vs temporal chunks (carried causal caches),
and the largest chunked-vs-whole difference. Each measurement runs in a fresh process; peak memory is
the process's peak RSS during the encode minus its RSS just before (model and input already built).
On CUDA it is torch.cuda.max_memory_allocated over the encode instead.

    python benchmarks/vae_memory.py [--frames 17 33 65 129] [--chunk 8] [--channels 32] [--size 64]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def measure(frames: int, chunk: int, channels: int, size: int, device: str) -> dict:
    import torch

    from sora.models.vae import CausalVAE

    torch.manual_seed(0)
    vae = CausalVAE(channels, 16, ft=4, fh=8).to(device).eval()          # the 4x8x8, 16-channel layout
    x = torch.rand(1, 3, frames, size, size, device=device) * 2 - 1
    with torch.no_grad():
        vae.encode(x[:, :, :1])                                           # warm up allocators / kernels
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            base = _rss_mb()
        z = vae.encode(x, chunk_frames=chunk)
        if device == "cuda":
            peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    return {"frames": frames, "chunk": chunk, "peak_mb": round(peak, 1), "latent": list(z.shape)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--frames", type=int, nargs="+", default=[17, 33, 65, 129])
    p.add_argument("--chunk", type=int, default=8)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "vae_memory_cpu.json"))
    p.add_argument("--one", nargs=2, type=int, help=argparse.SUPPRESS)   # internal: frames chunk
    a = p.parse_args()
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if a.one:
        print(json.dumps(measure(a.one[0], a.one[1], a.channels, a.size, device)))
        return
    rows = []
    for frames in a.frames:
        for chunk in (0, a.chunk):
            r = subprocess.run([sys.executable, __file__, "--one", str(frames), str(chunk), "--channels", str(a.channels),
                                "--size", str(a.size)], capture_output=True, text=True, check=True,
                               env=dict(os.environ, PYTHONPATH=ROOT))
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    # equality, in this process: the longest clip, whole vs chunked
    from sora.models.vae import CausalVAE

    torch.manual_seed(0)
    vae = CausalVAE(a.channels, 16, ft=4, fh=8).eval()
    x = torch.rand(1, 3, max(a.frames), a.size, a.size) * 2 - 1
    with torch.no_grad():
        err = (vae.encode(x) - vae.encode(x, chunk_frames=a.chunk)).abs().max().item()
    result = {"device": device, "host": platform.processor() or platform.machine(), "torch": torch.__version__,
              "vae": f"4x8x8, 16 latent channels, base width {a.channels}", "frame": f"{a.size}x{a.size}",
              "peak_memory": rows, "max_abs_diff_chunked_vs_whole": err, "frames_for_diff": max(a.frames)}
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
