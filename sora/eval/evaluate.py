"""Sample the held-out prompts at every configured size, write mp4 + gif, score adherence per size
and per duration (frames)."""
from __future__ import annotations

import json
from pathlib import Path

from sora.data.video_io import write_video
from sora.eval.adherence import MIN_DISPLACEMENT, score_clip, summarise
from sora.inference import VideoGenerator


def evaluate_run(run_dir: str, data_dir: str | None = None, seeds: int = 1, first_frame: str | None = None,
                 device: str = "cpu") -> dict:
    """first_frame: joint | generate (None: the run's sample.first_frame)."""
    gen = VideoGenerator.from_run(run_dir, device=device)
    mode = first_frame or gen.cfg.sample.first_frame
    data = Path(data_dir or gen.cfg.data.path)
    prompts = json.loads((data / "manifest.json").read_text())["heldout_prompts"]
    out_dir = Path(run_dir) / "samples"
    fps = gen.playback_fps
    rows = []
    for frames, height, width in gen.cfg.sample.sizes:
        for seed in range(seeds):
            videos = gen.generate(prompts, frames, height, width, seed=seed, first_frame=mode)
            for i, (prompt, video) in enumerate(zip(prompts, videos)):
                stem = out_dir / f"{frames}x{height}x{width}" / f"{i:02d}-{prompt.replace(' ', '_')}-s{seed}"
                write_video(stem.with_suffix(".mp4"), video, fps=fps)
                write_video(stem.with_suffix(".gif"), video, fps=fps)
                score = score_clip(video, prompt)
                rows.append({"prompt": prompt, "size": [frames, height, width], "seed": seed,
                             "file": str(stem.with_suffix(".mp4")), **score})
    report = {"summary": summarise(rows), "by_size": {}, "clips": rows}
    for size in gen.cfg.sample.sizes:
        report["by_size"]["x".join(map(str, size))] = summarise([r for r in rows if r["size"] == list(size)])
    durations = sorted({int(size[0]) for size in gen.cfg.sample.sizes})
    report["summary"]["by_frames"] = {str(f): summarise([r for r in rows if r["size"][0] == f]) for f in durations}
    report["summary"]["samples_dir"] = str(out_dir)
    report["summary"]["first_frame"] = mode
    (out_dir / "adherence.json").write_text(json.dumps(report, indent=2, default=str))
    return report


def format_by_frames(summary: dict) -> str:
    """One line per duration: colour right, and motion of at least MIN_DISPLACEMENT px the prompt's way."""
    lines = [f"adherence per duration (colour; motion >= {MIN_DISPLACEMENT:g} px the prompt's way):"]
    for frames, s in summary["by_frames"].items():
        motion = (f"motion {round(s['motion_accuracy'] * s['n_motion'])}/{s['n_motion']}, "
                  f"median travel {s['median_travel_px']:.1f} px" if s["n_motion"] else "motion n/a (images)")
        lines.append(f"  {int(frames):3d} frames: colour {round(s['colour_accuracy'] * s['n'])}/{s['n']}, {motion}")
    return "\n".join(lines)
