"""Packing efficiency on a dataset: real tokens / token budget for our best-fit packing, against
padding every sample of a fixed-count batch to the longest one (what unpacked trainers do).

    python benchmarks/packing_efficiency.py --data data/shapes --config configs/demo.yaml
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from sora.config import load_config
from sora.data.packing import PackItem, take_best_fit
from sora.data.pipeline import target_shape, tokens_for
from sora.data.shards import SkipStats, iter_shard_samples, list_shards


def sample_token_counts(cfg) -> list[int]:
    stats, counts = SkipStats(), []
    for s in iter_shard_samples(list_shards(cfg.data.path, cfg.data.split), stats, max_frames=cfg.data.max_frames):
        shape = target_shape(*s.frames.shape[:3], cfg.vae.ft, cfg.vae.fh, cfg.model.patch,
                             cfg.data.max_frames, cfg.data.max_tokens_per_sample)
        if shape is not None:
            counts.append(tokens_for(*shape, cfg.vae.ft, cfg.vae.fh, cfg.model.patch))
    return counts


def packed_efficiency(counts: list[int], budget: int, lookahead: int, epochs: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    stream = [counts[i] for _ in range(epochs) for i in rng.permutation(len(counts))]
    buffer, fills, pos = [], [], 0
    while pos < len(stream) or buffer:
        while pos < len(stream) and len(buffer) < lookahead:
            buffer.append(PackItem(torch.empty(0, 1, 1, stream[pos]), (1, 1, stream[pos]), "", ""))
            pos += 1
        if pos >= len(stream):
            break  # the final drain of a finite stream is not steady state
        fills.append(sum(p.num_tokens for p in take_best_fit(buffer, budget)) / budget)
    return float(np.mean(fills))


def padded_efficiency(counts: list[int], batch: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    order = [counts[i] for i in rng.permutation(len(counts))]
    real = padded = 0
    for i in range(0, len(order) - batch + 1, batch):
        chunk = order[i:i + batch]
        real += sum(chunk)
        padded += max(chunk) * batch
    return real / padded


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--data", default=None)
    ap.add_argument("--out", default="benchmarks/results/packing_cpu.json")
    a = ap.parse_args()
    cfg = load_config(a.config, [f"data.path={a.data}"] if a.data else [])
    t0 = time.perf_counter()
    counts = sample_token_counts(cfg)
    budget = cfg.data.tokens_per_batch
    avg_batch = max(1, round(budget / np.mean(counts)))
    result = {
        "dataset": cfg.data.path, "samples": len(counts), "token_budget": budget,
        "tokens_per_sample": {"min": int(min(counts)), "mean": float(np.mean(counts)), "max": int(max(counts))},
        "packed_efficiency": packed_efficiency(counts, budget, 32, 4, 0),
        "padded_batch_efficiency": padded_efficiency(counts, avg_batch, 0),
        "padded_batch_size": avg_batch,
        "seconds": time.perf_counter() - t0,
        "device": f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores (timing covers decoding)",
        "host": platform.node(), "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
