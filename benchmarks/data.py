"""Data pipeline benchmark: packing vs resolution bucketing on the same mixed-size data and token
budget, and the loader's clips/s.

    python benchmarks/data.py --quick

Efficiency = real tokens / token budget, averaged over micro-batches:
  - packing: our first-fit-decreasing packing (sora.data.packing.take_first_fit_decreasing, 32-clip lookahead), every
    sample at its own duration/resolution in one sequence (the function `packed_efficiency` of
    benchmarks/packing_efficiency.py);
  - bucketing: the usual alternative: samples of one exact (frames, height, width) bucket are
    batched together, as many as fit the budget (no padding inside a batch; the waste is the
    budget a bucket's batch leaves unused, and each bucket's last partial batch);
  - padding: fixed-count batches padded to their longest sample (packing_efficiency.py).
The synthetic mix: images and videos of 1..97 frames at 256p..720p in 4 aspect ratios, through a
4x8x8 VAE and 1x2x2 patches, capped at the budget. Loader clips/s: the real shard reader +
PackedLoader on moving-shapes shards written to a temporary directory, with a stand-in encoder
(average pooling to the latent shape) so the number is the data path, not a VAE.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, pyplot, write_json  # noqa: E402
from packing_efficiency import packed_efficiency, padded_efficiency  # noqa: E402

from sora.shapes import ShapeRules  # noqa: E402

FRAMES = [1, 1, 17, 33, 49, 65, 97]
HEIGHTS = [256, 360, 480, 720]
ASPECTS = [16 / 9, 4 / 3, 1.0, 9 / 16]


def synthetic_shapes(n: int, budget: int, seed: int, ft=4, fh=8, patch=(1, 2, 2)) -> list[tuple[tuple, int]]:
    rng = np.random.default_rng(seed)
    rules = ShapeRules(ft, fh, patch)
    out = []
    while len(out) < n:
        f = int(rng.choice(FRAMES))
        h = int(rng.choice(HEIGHTS))
        w = int(round(h * float(rng.choice(ASPECTS))))
        shape = rules.fit(f, h, w, 97, budget)
        if shape is not None:
            out.append((shape, rules.tokens(*shape)))
    return out


def bucketed_efficiency(shapes: list[tuple[tuple, int]], budget: int) -> float:
    buckets = defaultdict(list)
    for shape, tokens in shapes:
        buckets[shape].append(tokens)
    fills = []
    for tokens in buckets.values():
        per_batch = max(1, budget // tokens[0])
        for i in range(0, len(tokens), per_batch):
            fills.append(sum(tokens[i:i + per_batch]) / budget)
    return float(np.mean(fills))


def loader_clips_per_s(clips: int, budget: int, seconds: float) -> dict:
    from sora.config import load_config
    from sora.data.loader import PackedLoader
    from sora.data.pipeline import VideoStream
    from sora.data.shards import list_shards
    from sora.data.synth import synthesize

    cfg = load_config(None, [])
    with tempfile.TemporaryDirectory() as d:
        synthesize(d, clips=clips, seed=0, heldout_clips=0)
        videos = VideoStream(list_shards(d, "train"), cfg.data, ShapeRules.of(cfg), seed=0)
        c, ft, fh = cfg.vae.latent_channels, cfg.vae.ft, cfg.vae.fh

        def encode(video):  # [3, T, H, W] -> [C, T', H', W'] stand-in for the VAE
            first = torch.nn.functional.avg_pool3d(video[None], (1, fh, fh))[0]
            lat = torch.cat([first[:, :1], torch.nn.functional.avg_pool3d(first[None, :, 1:], (ft, 1, 1))[0]], 1) \
                if video.shape[1] > 1 else first
            return lat[:1].expand(c, -1, -1, -1).contiguous()

        loader = iter(PackedLoader(videos, encode, cfg.model.patch, budget, 0.0, 0))
        n = packs = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            n += next(loader).num_samples
            packs += 1
        dt = time.perf_counter() - start
    return {"clips_per_s": n / dt, "packs_per_s": packs / dt, "clips": n, "seconds": dt,
            "what": f"moving-shapes shards ({clips} clips, mp4/png decode) -> PackedLoader, budget {budget}, "
                    "stand-in encoder (avg-pool), 1 process, first pass decodes, later epochs hit the latent cache"}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--budgets", default="16384,32768,65536")
    ap.add_argument("--samples", type=int, default=None)
    ap.add_argument("--out", default="benchmarks/results")
    a = ap.parse_args(argv)
    n = a.samples or (2000 if a.quick else 10000)
    rows = []
    for budget in (int(b) for b in a.budgets.split(",")):
        shapes = synthetic_shapes(n, budget, seed=0)
        counts = [t for _, t in shapes]
        packed = packed_efficiency(counts, budget, 32, 1, 0)
        bucket = bucketed_efficiency(shapes, budget)
        padded = padded_efficiency(counts, max(1, round(budget / np.mean(counts))), 0)
        rows.append({"budget": budget, "samples": n, "distinct_shapes": len({s for s, _ in shapes}),
                     "tokens_per_sample": {"min": min(counts), "mean": float(np.mean(counts)), "max": max(counts)},
                     "packing": packed, "bucketing": bucket, "padding": padded, "gap_packing_minus_bucketing": packed - bucket,
                     "packing_meets_97pct": packed >= 0.97})
        r = rows[-1]
        print(f"budget {budget}: packing {packed:.2%}, bucketing {bucket:.2%} (gap {r['gap_packing_minus_bucketing']:+.2%}), "
              f"padding {padded:.2%}; {r['distinct_shapes']} distinct shapes")
    try:
        loader = loader_clips_per_s(64 if a.quick else 256, 2048, 10 if a.quick else 30)
        print(f"loader: {loader['clips_per_s']:.1f} clips/s ({loader['what']})")
    except Exception as e:  # noqa: BLE001 - the efficiency numbers stand on their own
        loader = {"error": f"{type(e).__name__}: {e}"}
        print(f"loader: {loader['error']}")
    res = {"env": environment("cpu"), "rows": rows, "loader": loader,
           "data": "synthetic: frames " + str(FRAMES) + ", heights " + str(HEIGHTS) + ", aspects 16:9/4:3/1:1/9:16; 4x8x8 VAE, 1x2x2 patch"}
    out = Path(a.out)
    write_json(out / "data_cpu.json", res)
    md = [f"Device: {res['env']['device']}; {res['env']['date']}. Data: {res['data']}.", "",
          "| token budget | packing | resolution bucketing | gap | padded batches |", "|---:|---:|---:|---:|---:|"]
    md += [f"| {r['budget']} | {r['packing']:.2%} | {r['bucketing']:.2%} | {r['gap_packing_minus_bucketing']:+.2%} | {r['padding']:.2%} |"
           for r in rows]
    if "clips_per_s" in loader:
        md += ["", f"Loader: {loader['clips_per_s']:.1f} clips/s ({loader['what']})."]
    (out / "data_cpu.md").write_text("\n".join(md) + "\n")
    plt = pyplot()
    if plt is not None:
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = [r["budget"] for r in rows]
        for key in ("packing", "bucketing", "padding"):
            ax.plot(xs, [100 * r[key] for r in rows], marker="o", label=key)
        ax.axhline(97, color="k", ls="--", lw=1, label="97% target")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("token budget per micro-batch (tokens)")
        ax.set_ylabel("efficiency (% of budget holding real tokens)")
        ax.set_ylim(0, 100)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "data_cpu.png", dpi=110)
        plt.close(fig)
    return res


if __name__ == "__main__":
    main()
