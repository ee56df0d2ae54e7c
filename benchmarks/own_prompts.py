"""Prompt adherence on prompts of our own choosing, through `sora sample`'s path (VideoGenerator).

N random prompts of the moving-shapes world (any of its 72 colour x shape x direction combos, held
out or not, drawn with SEED), sampled at 9 and 17 frames, each at a square and an unseen portrait or
landscape size, scored like `sora evaluate` (colour; at least 3 px of motion the prompt's way).
Writes JSON naming the run, machine, date and commit.

usage: python benchmarks/own_prompts.py --run runs/demo --out benchmarks/results/own_prompts_cpu.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import random
import subprocess

from sora.data.world import ALL_COMBOS, caption
from sora.eval.adherence import score_clip
from sora.inference import VideoGenerator

SIZES = [(9, 48, 48), (9, 40, 64), (17, 48, 48), (17, 64, 40)]     # 40x64 and 64x40: never trained on


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    prompts = [caption(*c) for c in random.Random(a.seed).sample(ALL_COMBOS, a.prompts)]
    gen = VideoGenerator.from_run(a.run)
    scores = {}
    for size in SIZES:
        clips = gen.generate(prompts, *size, seed=a.seed)
        marks = [score_clip(v, p) for v, p in zip(clips, prompts)]
        scores["x".join(map(str, size))] = {
            "colour": sum(m["colour_ok"] for m in marks), "motion": sum(bool(m["motion_ok"]) for m in marks),
            "n": len(prompts), "travel_px": [round(float(m["travel_px"]), 1) for m in marks]}
        print(size, {k: v for k, v in scores["x".join(map(str, size))].items() if k != "travel_px"}, flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    json.dump({"run": a.run, "prompts": prompts, "seed": a.seed, "scores": scores, "machine": platform.processor()
               or platform.machine(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
               "commit": commit}, open(a.out, "w"), indent=1)


if __name__ == "__main__":
    main()
