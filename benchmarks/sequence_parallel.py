"""Ulysses sequence parallelism on one long sample: per-rank activation memory, tokens/s and
all-to-all traffic, sp=1 against sp=2 (CPU, gloo; run on a GPU box for GPU numbers).

    python benchmarks/sequence_parallel.py --frames 16 --height 32 --width 32   # 16,384 tokens

Launches itself under torchrun once per sp degree. Activation memory is what autograd saves for
backward (the sum of the distinct storages packed by saved-tensor hooks during forward): the
part of a step's memory that sequence parallelism divides. All-to-all bytes are counted at
torch.distributed.all_to_all_single and compared with the analytic 4·N·width·bytes/sp per layer.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def worker(a) -> None:
    import torch
    import torch.distributed as dist

    from sora.models.dit import DiT
    from sora.parallel.sequence import padded_packing, shard_layout
    from sora.parallel.ulysses import wrap_for_sequence_parallel
    from sora.train.flops import ulysses_alltoall_bytes

    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo", verbose=False)
    rank, sp = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    in_dim, text_dim = 16, 32
    model = DiT(in_dim // 4, (1, 2, 2), a.width, a.depth, a.heads, text_dim, qk_norm=True, rope_theta=10000.0,
                backend="torch")
    grid = torch.tensor([[a.frames, a.height, a.width_tokens]], dtype=torch.int32)
    n = int(grid.prod())
    cu = torch.tensor([0, n], dtype=torch.int32)
    x = torch.randn(n * in_dim)                                                 # packed latents [N*P]
    ctx, cu_ctx = torch.randn(7, text_dim), torch.tensor([0, 7], dtype=torch.int32)
    t = torch.tensor([0.5])
    layout = model.kernels.layout(cu, grid)
    if sp > 1:
        wrap_for_sequence_parallel(model, dist.group.WORLD)
        layout = shard_layout(model.kernels.layout(*padded_packing(cu, grid, sp)), sp, rank)
        seg = layout.whole.sample_index[layout.rows[0] + layout.cu_seqlens[:-1].long()]   # sample of each segment
        ctxs = [ctx if int(s) == 0 else torch.randn(1, text_dim) for s in seg]
        lens = torch.tensor([c.shape[0] for c in ctxs])
        ctx, cu_ctx = torch.cat(ctxs), torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)]).int()
        t = torch.cat([t, t.new_zeros(1)])[seg]
    args = (x, layout, t, ctx, cu_ctx)

    sent = {"bytes": 0, "calls": 0}
    original = dist.all_to_all_single

    def counting(output, input, *rest, **kw):
        sent["bytes"] += input.numel() * input.element_size()
        sent["calls"] += 1
        return original(output, input, *rest, **kw)

    dist.all_to_all_single = counting
    saved: dict[int, int] = {}

    def pack(tensor):
        st = tensor.untyped_storage()
        saved[st.data_ptr()] = st.nbytes()
        return tensor

    times = []
    for it in range(a.repeats + 1):
        saved.clear()
        sent.update(bytes=0, calls=0)
        dist.barrier()
        t0 = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t_: t_):
            out = model(*args)
        fwd_bytes, fwd_calls = sent["bytes"], sent["calls"]
        out.square().mean().backward()
        dist.barrier()
        if it:  # the first is warm-up
            times.append(time.perf_counter() - t0)
    act = sum(saved.values())
    rec = {"rank": rank, "sp": sp, "tokens": n, "local_tokens": layout.num_tokens,
           "activation_bytes": act, "step_s": sorted(times)[len(times) // 2],
           "all_to_all_forward_bytes": fwd_bytes, "all_to_all_forward_calls": fwd_calls,
           "all_to_all_forward_bytes_analytic": a.depth * ulysses_alltoall_bytes(-(-n // sp) * sp, a.width, sp, 4)}
    gathered = [None] * sp
    dist.all_gather_object(gathered, rec)
    if rank == 0:
        Path(a.result).write_text(json.dumps(gathered))
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--height", type=int, default=32, help="token rows")
    p.add_argument("--width-tokens", dest="width_tokens", type=int, default=32, help="token columns")
    p.add_argument("--width", type=int, default=64, help="model width")
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--sp", type=int, nargs="+", default=[1, 2])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sequence_parallel_cpu.json"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return worker(a)
    import torch

    runs = {}
    for sp in a.sp:
        result = Path(a.out).with_suffix(f".sp{sp}.tmp.json")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(sp),
               __file__, "--worker", "--result", str(result), "--frames", str(a.frames), "--height", str(a.height),
               "--width-tokens", str(a.width_tokens), "--width", str(a.width), "--depth", str(a.depth),
               "--heads", str(a.heads), "--repeats", str(a.repeats)]
        env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // sp)),
                   PYTHONPATH=str(ROOT), DS_ACCELERATOR=os.environ.get("DS_ACCELERATOR", "cpu"))
        subprocess.run(cmd, check=True, env=env)
        runs[sp] = json.loads(result.read_text())
        result.unlink()
    base = runs[a.sp[0]][0]
    summary = []
    for sp, ranks in runs.items():
        worst = max(r["activation_bytes"] for r in ranks)
        step = max(r["step_s"] for r in ranks)
        summary.append({"sp": sp, "tokens": base["tokens"], "activation_bytes_per_rank_max": worst,
                        "activation_ratio_to_sp1": worst / base["activation_bytes"],
                        "tokens_per_s": base["tokens"] / step, "step_s": step,
                        "all_to_all_forward_bytes_per_rank": ranks[0]["all_to_all_forward_bytes"],
                        "all_to_all_forward_bytes_analytic": ranks[0]["all_to_all_forward_bytes_analytic"]})
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    report = {"device": f"CPU: {cpu}, {os.cpu_count()} cores (shared)", "date": datetime.now(timezone.utc).isoformat(),
              "torch": torch.__version__, "model": {"width": a.width, "depth": a.depth, "heads": a.heads},
              "sample": [a.frames, a.height, a.width_tokens], "runs": runs, "summary": summary}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=2))
    for s in summary:
        print(f"sp={s['sp']}: {s['tokens']} tokens, activations {s['activation_bytes_per_rank_max'] / 2**20:.1f} MiB/rank "
              f"({s['activation_ratio_to_sp1']:.2f}x sp=1), {s['tokens_per_s']:.0f} tok/s, all-to-all fwd "
              f"{s['all_to_all_forward_bytes_per_rank'] / 2**20:.2f} MiB/rank (analytic {s['all_to_all_forward_bytes_analytic'] / 2**20:.2f})")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
