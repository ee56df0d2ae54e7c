"""Summarise a finished run's measured numbers (from its own metrics.jsonl and adherence.json)
into one JSON file with the machine and software named.

    python benchmarks/summarise_run.py --run runs/demo --out benchmarks/results/demo_cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="runs/demo")
    ap.add_argument("--out", default="benchmarks/results/demo_cpu.json")
    ap.add_argument("--wall-seconds", type=float, default=None, help="total wall time of the demo, if measured")
    a = ap.parse_args()
    run = Path(a.run)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steady = rows[len(rows) // 5:]  # skip warm-up (first step includes latent encoding of new clips)
    adherence = json.loads((run / "samples" / "adherence.json").read_text())
    result = {
        "run": str(run),
        "steps": rows[-1]["step"] + 1,
        "final_loss": rows[-1]["loss"],
        "tokens_per_s_median": statistics.median(r["tokens_per_s"] for r in steady),
        "mfu_median": statistics.median(r["mfu"] for r in steady),
        "packing_efficiency_mean": statistics.mean(r["packing_efficiency"] for r in rows),
        "adherence": adherence["summary"],
        "adherence_by_size": adherence["by_size"],
        "demo_wall_seconds": a.wall_seconds,
        "device": f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
        "note": "tokens/s is the global rate over all ranks; MFU is against a matmul peak measured on this CPU in the same run",
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
