"""Sample the held-out prompts at every configured size, write mp4 + gif, score adherence."""
from __future__ import annotations

import json
from pathlib import Path

from sora.data.video_io import write_video
from sora.eval.adherence import score_clip, summarise
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
    report["summary"]["samples_dir"] = str(out_dir)
    report["summary"]["first_frame"] = mode
    (out_dir / "adherence.json").write_text(json.dumps(report, indent=2, default=str))
    return report
