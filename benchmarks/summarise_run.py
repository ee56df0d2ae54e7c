"""A finished `make demo` -> one result file, every number read from what the demo wrote:

    python benchmarks/summarise_run.py --run runs/demo --vae-run runs/demo-vae \
        --timings runs/demo/demo_timings.json --out benchmarks/results/demo_cpu.json

scripts/demo.sh runs it at the end. Reads the DiT run's metrics.jsonl (throughput, MFU, packing,
final loss), its samples/adherence.json (`sora evaluate`), its config.yaml (how it sampled), the VAE
run's metrics.jsonl (held-out PSNR / SSIM) and the timings demo.sh records (seconds per stage,
load average at start and end, the accelerator). Names the machine, date, commit and software.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, write_json  # noqa: E402


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarise(run: Path, vae_run: Path | None, timings: dict | None) -> dict:
    rows = [r for r in _jsonl(run / "metrics.jsonl") if "loss" in r]
    if not rows:
        raise ValueError(f"{run / 'metrics.jsonl'} has no training steps: has the demo finished?")
    steady = rows[len(rows) // 5:] or rows   # skip warm-up (the first steps encode new clips)
    adherence = json.loads((run / "samples" / "adherence.json").read_text())
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    device = (timings or {}).get("accelerator", "cpu")
    result = {
        "run": str(run),
        "steps": rows[-1]["step"] + 1,
        "final_loss": rows[-1]["loss"],
        "tokens_per_s_median": statistics.median(r["tokens_per_s"] for r in steady),
        "mfu_median": statistics.median(r["mfu"] for r in steady),
        "packing_efficiency_median": statistics.median(r["packing_efficiency"] for r in rows),
        "sampling": {k: cfg["sample"][k] for k in ("first_frame", "steps", "cfg", "sampler", "sizes")
                     if k in cfg.get("sample", {})},
        "adherence": adherence["summary"],
        "adherence_by_size": adherence["by_size"],
        "adherence_seeds": len({c["seed"] for c in adherence.get("clips", [])}) or None,
    }
    if vae_run is not None and (vae_run / "metrics.jsonl").is_file():
        evals = [r for r in _jsonl(vae_run / "metrics.jsonl") if "eval_psnr" in r]
        if evals:
            last = evals[-1]
            result["vae_eval"] = {"step": last.get("step"), "psnr": last["eval_psnr"], "ssim": last["eval_ssim"],
                                  "clips": last.get("eval_clips")}
    if timings:
        result["demo_wall_seconds"] = timings.get("total_seconds")
        result["demo_stage_seconds"] = timings.get("stages")
        result["load"] = {k: timings[k] for k in ("loadavg_at_start", "loadavg_at_end") if k in timings}
    env = environment(device)
    env.pop("loadavg_1m_at_start", None)   # this script's own moment; the demo's load is under "load"
    result.update(env)
    result["note"] = ("tokens/s is the global rate over all ranks; MFU is against a matmul peak measured in the same "
                      "run; stage seconds include only what ran (a kept stage takes ~0 s)")
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/demo")
    ap.add_argument("--vae-run", default="runs/demo-vae")
    ap.add_argument("--timings", default=None, help="the JSON scripts/demo.sh writes (stages, load, accelerator)")
    ap.add_argument("--out", default=None, help="default: benchmarks/results/demo_<accelerator>.json")
    a = ap.parse_args(argv)
    timings = json.loads(Path(a.timings).read_text()) if a.timings else None
    result = summarise(Path(a.run), Path(a.vae_run) if a.vae_run else None, timings)
    out = Path(a.out or f"benchmarks/results/demo_{(timings or {}).get('accelerator', 'cpu')}.json")
    write_json(out, result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
