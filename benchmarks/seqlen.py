"""Sequence-length profile: one full DiT training step (forward, backward, AdamW step) on one
sample of L tokens, for model sizes x lengths x sequence-parallel degrees.

    python benchmarks/seqlen.py --quick                                   # CPU, tiny model, < 3 min
    python benchmarks/seqlen.py --device cuda --sizes DiT-1B --lengths 8192,16384,32768,65536
    torchrun --nproc_per_node 4 benchmarks/seqlen.py --device cuda --sp 4 --sizes DiT-1B ...

Reports per point: step time (median), tokens/s, achieved TFLOP/s (model FLOPs from
sora/train/flops.py: no recomputation counted), MFU against the datasheet bf16 peak on known GPUs
and against the matmul peak measured in the same run, HFU (executed FLOPs incl. checkpoint and
attention recompute), peak memory (torch.cuda.max_memory_allocated on GPU; on CPU the peak of
live tensors tracked by torch's MemTracker over one extra step) next to the analytic model's
prediction. Writes seqlen_<device>[_spN].json and a PNG of each metric against length.
sp > 1 runs each sample split over the ranks with Ulysses all-to-all (sora/parallel/ulysses.py);
it is recorded as unavailable when this build's sequence parallelism cannot be imported.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench, environment, measure_peaks, pyplot, write_json, write_outputs  # noqa: E402

from sora.models.dit import DIT_SIZES, DiT  # noqa: E402
from sora.train import flops as F  # noqa: E402

TINY = {"DiT-tiny": dict(depth=2, width=128, heads=4)}


def grid_for(tokens: int) -> tuple[int, int, int]:
    """A video-like (t, h, w) token grid with exactly `tokens` tokens (16:9-ish frames)."""
    best = (1, 1, tokens)
    for t in range(1, tokens + 1):
        if tokens % t:
            continue
        hw = tokens // t
        h = max(d for d in range(1, math.isqrt(hw) + 1) if hw % d == 0)
        w = hw // h
        if w <= 2 * h and t <= w:           # frames no more numerous than a row is wide
            best = (t, h, w)
            break
    return best


def build(size: str, shape_kw: dict, device, dtype, checkpointing: bool, backend: str | None):
    dims = TINY.get(size) or DIT_SIZES[size]
    model = DiT(shape_kw["in_dim"] // 4, (1, 2, 2), dims["width"], dims["depth"], dims["heads"], shape_kw["text_dim"],
                checkpointing=checkpointing, backend=backend).to(device, dtype).train()
    shape = F.DiTShape(dims["depth"], dims["width"], dims["heads"], shape_kw["in_dim"], shape_kw["text_dim"])
    return model, shape


def make_step(model, opt, tokens, ctx_tokens, in_dim, text_dim, device, dtype, sp=1, rank=0, group=None):
    g = grid_for(tokens)
    cu = torch.tensor([0, tokens], dtype=torch.int32, device=device)
    grid = torch.tensor([g], dtype=torch.int32, device=device)
    x = torch.randn(tokens * in_dim, device=device, dtype=dtype)               # packed latents [N*P]
    ctx = torch.randn(ctx_tokens, text_dim, device=device, dtype=dtype)
    cu_ctx = torch.tensor([0, ctx_tokens], dtype=torch.int32, device=device)
    t = torch.rand(1, device=device).to(dtype)
    layout = model.kernels.layout(cu, grid)
    if sp > 1:  # this rank's slice of the one sample (tokens % sp == 0: no pad segment)
        from sora.parallel.sequence import padded_packing, shard_layout

        layout = shard_layout(model.kernels.layout(*padded_packing(cu, grid, sp)), sp, rank)
    target = torch.randn_like(x)
    params = [p for p in model.parameters()]

    def step():
        out = model(x, layout, t, ctx, cu_ctx)
        (out.float() - target.float()).square().mean().backward()
        if group is not None:            # data x sequence parallel: gradients summed over all ranks
            flat = torch.cat([p.grad.reshape(-1) for p in params])
            torch.distributed.all_reduce(flat)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def tracked_peak_cpu(step, model, opt) -> int:
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = MemTracker()
    tracker.track_external(model, opt)          # parameters and Adam states count too
    with tracker:
        step()
        tracker.reset_mod_stats()
    return int(tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sizes", default=None, help="comma-separated registry sizes (DiT-T ... DiT-3B, DiT-tiny)")
    ap.add_argument("--lengths", default=None, help="comma-separated tokens per sample")
    ap.add_argument("--sp", type=int, default=int(os.environ.get("WORLD_SIZE", "1")))
    ap.add_argument("--ctx-tokens", type=int, default=64)
    ap.add_argument("--text-dim", type=int, default=None)
    ap.add_argument("--no-checkpointing", action="store_true")
    ap.add_argument("--backend", default=None, help="kernel backend (default: auto)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="benchmarks/results")
    a = ap.parse_args(argv)
    cuda = a.device.startswith("cuda")
    quick_cpu = a.quick or not cuda
    sizes = (a.sizes or ("DiT-tiny" if quick_cpu else "DiT-1B")).split(",")
    lengths = [int(x) for x in (a.lengths or ("128,256,512,1024" if quick_cpu else "8192,16384,32768,65536")).split(",")]
    checkpointing = not a.no_checkpointing and cuda
    dtype = torch.bfloat16 if cuda else torch.float32
    sp, rank, group, world = a.sp, 0, None, 1
    result = {"sizes": sizes, "lengths": lengths, "sp": sp, "checkpointing": checkpointing, "dtype": str(dtype)[6:],
              "rows": []}
    if sp > 1:
        try:
            import torch.distributed as dist

            from sora.parallel.ulysses import init_sequence_parallel_groups, wrap_for_sequence_parallel
            if not dist.is_initialized():
                dist.init_process_group("nccl" if cuda else "gloo")
            rank, world = dist.get_rank(), dist.get_world_size()
            if cuda:
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            mpu = init_sequence_parallel_groups(sp)
            sp_group, group = mpu.get_sequence_parallel_group(), dist.group.WORLD
        except Exception as e:  # noqa: BLE001 - sequence parallelism may not be in this build yet
            result["unavailable"] = f"sp={sp} needs Ulysses sequence parallelism: {type(e).__name__}: {e}"
            print(result["unavailable"])
            write_json(Path(a.out) / f"seqlen_{'cuda' if cuda else 'cpu'}_sp{sp}.json", result)
            return result
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    env = environment(str(device))
    peaks = measure_peaks(str(device), quick_cpu)
    datasheet, source = F.peak_flops(str(device)) if cuda else (None, None)
    result.update(env=env, peaks=peaks, datasheet_peak_tflops=datasheet / 1e12 if datasheet else None,
                  datasheet_source=source, world=world)
    text_dim = a.text_dim or (4096 if cuda else 64)
    shape_kw = {"in_dim": 16 * 4 if cuda else 16, "text_dim": text_dim}
    for size in sizes:
        for L in lengths:
            row = {"size": size, "tokens": L, "sp": sp}
            try:
                torch.manual_seed(0)
                model, shape = build(size, shape_kw, device, dtype, checkpointing, a.backend)
                if sp > 1:
                    from sora.parallel.ulysses import wrap_for_sequence_parallel
                    wrap_for_sequence_parallel(model, sp_group)
                path = F.attention_path(model.kernels.attention, str(device))
                opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
                step = make_step(model, opt, L, a.ctx_tokens, shape_kw["in_dim"], text_dim, device, dtype, sp, rank,
                                 group if world > 1 else None)
                if cuda:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                timing = bench(step, str(device), warmup=1 if quick_cpu else 3, reps=3 if quick_cpu else 10)
                fl = F.step_flops(shape, [L], [a.ctx_tokens], checkpointing, path, ctx_requires_grad=False)
                per_rank = 1.0 / sp                         # each sp rank does 1/sp of the sample's work
                sec = timing["ms"] * 1e-3
                act_b = F.BYTES[dtype]
                state = F.StateBytes(shape.dit_params() * act_b, 0, shape.dit_params() * 2 * act_b)
                work = F.peak_bytes(shape, [L], [a.ctx_tokens], F.StateBytes(0, 0, 0), act_b, checkpointing, path)
                predicted = state.params + state.optimizer + work / sp
                row.update(step_ms=timing["ms"], timing=timing["method"], tokens_per_s=L / sec,
                           model_tflops=fl.model * per_rank / sec / 1e12, executed_tflops=fl.executed * per_rank / sec / 1e12,
                           model_flops=fl.model, executed_flops=fl.executed, attention_path=path, params=shape.dit_params(),
                           kernels=dict(model.kernels.names), predicted_peak_gib=predicted / 2 ** 30)
                row["frac_measured_matmul"] = row["model_tflops"] / peaks["matmul_tflops"]
                if datasheet:
                    row["mfu"] = row["model_tflops"] * 1e12 / datasheet
                    row["hfu"] = row["executed_tflops"] * 1e12 / datasheet
                if cuda:
                    row["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
                    row["peak_mem_method"] = "torch.cuda.max_memory_allocated"
                elif sp == 1:
                    row["peak_mem_gib"] = tracked_peak_cpu(step, model, opt) / 2 ** 30
                    row["peak_mem_method"] = "MemTracker peak of live tensors, one step"
                if "peak_mem_gib" in row:
                    row["predicted_over_measured"] = row["predicted_peak_gib"] / row["peak_mem_gib"]
                if sp > 1:
                    row["alltoall_bytes_per_step_per_rank"] = (2 + checkpointing) * shape.depth * \
                        F.ulysses_alltoall_bytes(L, shape.width, sp, act_b)
            except torch.cuda.OutOfMemoryError as e:
                row["error"] = f"OOM: {str(e).splitlines()[0]}"
            except Exception as e:  # noqa: BLE001 - one point failing must not lose the others
                row["error"] = f"{type(e).__name__}: {e}"
                traceback.print_exc(limit=3)
            finally:
                model = opt = step = None  # noqa: F841 - free before the next point
                if cuda:
                    torch.cuda.empty_cache()
            result["rows"].append(row)
            if rank == 0:
                print(_line(row), flush=True)
    if rank == 0:
        write_outputs(a.out, f"seqlen_{env['device_kind']}" + (f"_sp{sp}" if sp > 1 else ""), result, markdown, plot)
    return result


def _line(r):
    if "error" in r:
        return f"{r['size']:>8} L={r['tokens']:>6} sp={r['sp']} ERROR {r['error']}"
    mfu = f", MFU {r['mfu']:.1%}" if "mfu" in r else ""
    mem = f", peak {r['peak_mem_gib']:.3f} GiB (model {r['predicted_peak_gib']:.3f})" if "peak_mem_gib" in r else ""
    return (f"{r['size']:>8} L={r['tokens']:>6} sp={r['sp']} step {r['step_ms']:.1f} ms, {r['tokens_per_s']:.0f} tok/s, "
            f"{r['model_tflops']:.4f} TFLOP/s ({r['frac_measured_matmul']:.1%} of measured matmul){mfu}{mem}")


def markdown(res: dict) -> str:
    p = res["peaks"]
    lines = [f"Device: {res['env']['device']}; {res['env']['date']}; torch {res['env']['torch']}, "
             f"triton {res['env']['triton']}, deepspeed {res['env']['deepspeed']}; {res['dtype']}, "
             f"activation checkpointing {'on' if res['checkpointing'] else 'off'}, sp={res['sp']}.",
             f"Measured in this run: matmul {p['matmul_tflops']:.3f} TFLOP/s ({p['matmul']}). "
             f"MFU uses model FLOPs (sora/train/flops.py)" + (f" over the {res['datasheet_source']} peak." if res.get("datasheet_source") else "."),
             "", "| size | tokens | step ms | tokens/s | TFLOP/s | of measured matmul | MFU | peak GiB | model GiB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        if "error" in r:
            lines.append(f"| {r['size']} | {r['tokens']} | error: {r['error'][:60]} | | | | | | |")
            continue
        lines.append(f"| {r['size']} | {r['tokens']} | {r['step_ms']:.1f} | {r['tokens_per_s']:.0f} | {r['model_tflops']:.4f} | "
                     f"{r['frac_measured_matmul']:.1%} | {r['mfu']:.1%} | " if "mfu" in r else
                     f"| {r['size']} | {r['tokens']} | {r['step_ms']:.1f} | {r['tokens_per_s']:.0f} | {r['model_tflops']:.4f} | "
                     f"{r['frac_measured_matmul']:.1%} | — | ")
        lines[-1] += (f"{r['peak_mem_gib']:.3f} | {r['predicted_peak_gib']:.3f} |" if "peak_mem_gib" in r
                      else f"— | {r['predicted_peak_gib']:.3f} |")
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    plt = pyplot()
    rows = [r for r in res["rows"] if "error" not in r]
    if plt is None or not rows:
        return
    metrics = [("tokens_per_s", "tokens/s"), ("model_tflops", "achieved TFLOP/s (model FLOPs)"),
               ("mfu" if "mfu" in rows[0] else "frac_measured_matmul",
                "MFU (datasheet peak)" if "mfu" in rows[0] else "fraction of measured matmul peak"),
               ("peak_mem_gib", "peak memory (GiB)")]
    fig, axes = plt.subplots(1, 4, figsize=(17, 4))
    for ax, (key, label) in zip(axes, metrics):
        for size in dict.fromkeys(r["size"] for r in rows):
            sub = [r for r in rows if r["size"] == size and key in r]
            if sub:
                ax.plot([r["tokens"] for r in sub], [r[key] for r in sub], marker="o", label=f"{size} sp={res['sp']}")
            if key == "peak_mem_gib":
                ax.plot([r["tokens"] for r in sub], [r["predicted_peak_gib"] for r in sub], ls=":", marker="x",
                        label=f"{size} analytic model")
        if key == "model_tflops":
            ax.axhline(res["peaks"]["matmul_tflops"], color="k", ls="--", lw=1, label="measured matmul peak")
        if key == "frac_measured_matmul":
            ax.axhline(1.0, color="k", ls="--", lw=1, label="measured matmul peak")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tokens per sample")
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
    fig.suptitle(f"DiT training step vs sequence length — {res['env']['device']}, {res['dtype']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
