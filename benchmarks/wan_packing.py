"""Packed Wan training step vs the two ways diffusers-based trainers batch, side by side in one run.

Same random Wan weights (a diffusers WanTransformer3DModel, loaded into our DiT with load_dit), same
mixed-size batch (images and clips, 4 sizes x 2), forward + backward of a fixed linear loss:
  a) diffusers, one sample at a time (batch 1: DiffSynth's way);
  b) diffusers, the samples zero-padded to the largest along each axis into one batch (latents
     and captions; Wan's transformer has no attention mask, so padded tokens and padded caption
     rows are attended to: each padded sample's output changes, measured here);
  ours) DiT.denoise: the 8 samples packed into one varlen pass.
tokens/s counts real tokens only. Rounds alternate a / b / ours to spread the shared machine's
noise over all three. Peak memory: bytes of live tensors (torch's MemTracker, parameters and
gradients included) during one untimed step of each, not RSS; for (a) the largest of its 8 calls.

    python benchmarks/wan_packing.py [--rounds 7] [--out benchmarks/results]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import environment, write_json  # noqa: E402

WAN = dict(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=64, in_channels=16, out_channels=16,
           text_dim=512, freq_dim=256, ffn_dim=1024, num_layers=4, cross_attn_norm=True,
           qk_norm="rms_norm_across_heads", rope_max_seq_len=1024)
SIZES = [(1, 32, 32), (1, 24, 40), (5, 16, 16), (3, 24, 24)]     # latent (T, H, W): 2 images, 2 clips; x2 each
TEXT_ROWS = [12, 30, 7, 21, 16, 9, 25, 5]                          # caption rows per sample


def make_batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    c = WAN["in_channels"]
    lat = [torch.randn(c, *s, generator=g) for s in SIZES * 2]
    sig = torch.rand(len(lat), generator=g)
    text = [torch.randn(n, WAN["text_dim"], generator=g) for n in TEXT_ROWS]
    probe = [torch.randn(c, *x.shape[1:], generator=g) for x in lat]   # loss = sum(out * probe): a fixed linear loss
    return lat, sig, text, probe


def real_tokens(lat) -> int:
    return sum(x.shape[1] * (x.shape[2] // 2) * (x.shape[3] // 2) for x in lat)


def padded(lat, text):
    """[B, C, T, H, W] zero-padded to the largest along each axis, [B, L, D] captions zero-padded."""
    t, h, w = (max(x.shape[i] for x in lat) for i in (1, 2, 3))
    x = torch.zeros(len(lat), lat[0].shape[0], t, h, w)
    for b, z in enumerate(lat):
        x[b, :, :z.shape[1], :z.shape[2], :z.shape[3]] = z
    ctx = torch.zeros(len(text), max(c.shape[0] for c in text), text[0].shape[1])
    for b, c in enumerate(text):
        ctx[b, :c.shape[0]] = c
    return x, ctx


def step_batch1(ref, lat, sig, text, probe):
    outs = []
    for x, s, c, p in zip(lat, sig, text, probe):
        out = ref(x[None], (1000 * s).reshape(1), c[None]).sample[0]
        (out * p).sum().backward()
        outs.append(out.detach())
    return outs


def step_padded(ref, lat, sig, text, probe):
    x, ctx = padded(lat, text)
    out = ref(x, 1000 * sig, ctx).sample                                   # [B, C, T, H, W]
    outs = [out[b, :, :z.shape[1], :z.shape[2], :z.shape[3]] for b, z in enumerate(lat)]
    sum((o * p).sum() for o, p in zip(outs, probe)).backward()             # padded positions: not in the loss
    return [o.detach() for o in outs]


def step_packed(model, lat, sig, text, probe):
    outs = model.denoise(lat, sig, text)
    sum((o * p).sum() for o, p in zip(outs, probe)).backward()
    return [o.detach() for o in outs]


def timed(fn, model, *args) -> float:
    model.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    fn(model, *args)
    return time.perf_counter() - t0


def peak_bytes(fn, model, *args, one_at_a_time: bool = False) -> int:
    """Peak bytes of live tensors during one step. one_at_a_time: one tracker per sample (MemTracker
    takes one call per module per session), gradients of the earlier samples kept, the max taken."""
    from torch.distributed._tools.mem_tracker import MemTracker

    model.zero_grad(set_to_none=True)
    parts = [[[a[i]] for a in args] for i in range(len(args[0]))] if one_at_a_time else [args]
    peak = 0
    for part in parts:
        tracker = MemTracker()
        tracker.track_external(model)
        with tracker:
            fn(model, *part)
        peak = max(peak, int(tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]))
    return peak


def rel_diff(outs, want) -> list[float]:
    return [float((o - w).abs().max() / w.abs().max()) for o, w in zip(outs, want)]


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args()
    import diffusers
    from diffusers import WanTransformer3DModel

    from sora.models import load_dit

    env = environment("cpu")
    env.update(cpu_model=cpu_model(), diffusers=diffusers.__version__, loadavg_before=list(os.getloadavg()))
    torch.manual_seed(0)
    ref = WanTransformer3DModel(**WAN).train()
    with torch.no_grad():                       # leave diffusers' zero init: every path computes something
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    with tempfile.TemporaryDirectory() as d:
        ref.save_pretrained(d)
        ours = load_dit(d).train()
    lat, sig, text, probe = make_batch()
    n_real = real_tokens(lat)
    x, _ = padded(lat, text)
    n_padded = x.shape[0] * x.shape[2] * (x.shape[3] // 2) * (x.shape[4] // 2)
    methods = {"a_diffusers_batch1": (step_batch1, ref), "b_diffusers_padded": (step_padded, ref),
               "ours_packed": (step_packed, ours)}
    batch = (lat, sig, text, probe)

    # numerics (one untimed step each; also the warm-up): outputs on the real region against (a)
    outs = {name: fn(model, *batch) for name, (fn, model) in methods.items()}
    numerics = {name: rel_diff(o, outs["a_diffusers_batch1"]) for name, o in outs.items() if name != "a_diffusers_batch1"}
    memory = {name: peak_bytes(fn, model, *batch, one_at_a_time=fn is step_batch1) for name, (fn, model) in methods.items()}
    times = {name: [] for name in methods}
    for r in range(args.rounds):
        for name, (fn, model) in methods.items():
            times[name].append(timed(fn, model, *batch))
            print(f"round {r} {name}: {times[name][-1]:.2f} s", flush=True)
    env["loadavg_after"] = list(os.getloadavg())
    rows = {}
    for name in methods:
        med = statistics.median(times[name])
        rows[name] = {"seconds": times[name], "median_s": med, "real_tokens_per_s": n_real / med,
                      "min_s": min(times[name]), "real_tokens_per_s_at_min": n_real / min(times[name]),
                      "peak_tensor_bytes": memory[name],
                      "max_rel_diff_vs_a": max(numerics[name]) if name in numerics else 0.0,
                      "rel_diff_vs_a_per_sample": numerics.get(name)}
    base = rows["ours_packed"]["real_tokens_per_s"]
    for name in rows:
        rows[name]["ours_speedup"] = base / rows[name]["real_tokens_per_s"]
        rows[name]["ours_speedup_at_min"] = (rows["ours_packed"]["real_tokens_per_s_at_min"]
                                             / rows[name]["real_tokens_per_s_at_min"])
    result = {"benchmark": "wan_packing", "environment": env, "kernels": ours.kernels.names,
              "model": dict(WAN, patch_size=list(WAN["patch_size"]),
                            params=sum(p.numel() for p in ref.parameters())),
              "batch": {"latent_sizes_THW": [list(s.shape[1:]) for s in lat], "text_rows": TEXT_ROWS,
                        "real_tokens": n_real, "padded_tokens": n_padded, "padded_to_THW": list(x.shape[2:])},
              "loss": "sum(output * fixed random probe) over each sample's real region; forward + backward",
              "memory": "peak bytes of live tensors (torch MemTracker: params, grads, activations, temporaries); not RSS",
              "timing": f"wall clock of one whole step per round, {args.rounds} rounds alternating a/b/ours; median, and "
                        "min (the least disturbed by other jobs)",
              "results": rows}
    out = Path(args.out)
    write_json(out / "wan_packing_cpu.json", result)
    (out / "wan_packing_cpu.md").write_text(markdown(result) + "\n")
    print(markdown(result))


def markdown(r: dict) -> str:
    e, b = r["environment"], r["batch"]
    lines = [f"# Wan packing benchmark (CPU)\n",
             f"{e['cpu_model']} ({e['device']}), {e['date']}, commit {e['commit']}, torch {e['torch']}, "
             f"diffusers {e['diffusers']}; load average before {e['loadavg_before']}, after {e['loadavg_after']} "
             f"(the benchmark itself loads both cores; more means other jobs ran).\n",
             f"Model: random WanTransformer3DModel, {r['model']['num_layers']} layers, width "
             f"{r['model']['num_attention_heads'] * r['model']['attention_head_dim']}, ffn {r['model']['ffn_dim']}, "
             f"{r['model']['params'] / 1e6:.1f} M params; our kernels: {r['kernels']}.",
             f"Batch: latents (T, H, W) {b['latent_sizes_THW']}, caption rows {b['text_rows']}: {b['real_tokens']} "
             f"real tokens; padded to {b['padded_to_THW']}: {b['padded_tokens']} tokens.",
             f"Timing: {r['timing']}. Memory: {r['memory']}.\n",
             "| method | step s: median (min) | rounds s | real tokens/s: median (at min) | ours faster by: median (min) "
             "| peak tensor MiB | max rel. diff of outputs vs (a) |",
             "|---|---|---|---|---|---|---|"]
    for name, row in r["results"].items():
        lines.append(f"| {name} | {row['median_s']:.2f} ({row['min_s']:.2f}) | {', '.join(f'{s:.2f}' for s in row['seconds'])} | "
                     f"{row['real_tokens_per_s']:.0f} ({row['real_tokens_per_s_at_min']:.0f}) | "
                     f"{row['ours_speedup']:.2f}x ({row['ours_speedup_at_min']:.2f}x) | "
                     f"{row['peak_tensor_bytes'] / 2 ** 20:.0f} | {row['max_rel_diff_vs_a']:.1e} |")
    lines.append("\n(b)'s outputs differ from (a)'s because diffusers' Wan has no attention mask: every padded "
                 "sample attends to its zero-padded latent tokens and caption rows. Per sample: "
                 f"{[f'{d:.2g}' for d in r['results']['b_diffusers_padded']['rel_diff_vs_a_per_sample']]}.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
