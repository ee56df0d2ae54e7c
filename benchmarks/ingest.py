"""`sora ingest` throughput and memory against video length (reported, never asserted).

For each length (10 s, 1 min, 10 min of 640x360 h264 at 24 fps, made here with PyAV: a textured
background that drifts, a moving square, a new shot colour every 5 s) a fresh Python process ingests
the one file with one worker and reports its wall time and peak resident memory (VmHWM); the
1-minute video is also ingested with --scenes (two decoding passes). Throughput is seconds of source
video per wall-clock second per worker. The machine is shared, so the load average is recorded.

    python benchmarks/ingest.py [--quick] [--out benchmarks/results/ingest_cpu.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import environment, write_json  # noqa: E402

WIDTH, HEIGHT, FPS = 640, 360, 24
# This process's peak resident memory (VmHWM). Not ru_maxrss: Linux carries that across exec, so a
# child would report this (torch-importing) parent's peak.
PEAK_RSS_MB = ("[int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')][0] / 1024")
COLOURS = np.array([(40, 90, 200), (220, 200, 40), (30, 160, 60), (200, 60, 200)], np.float32)


def make_video(path: str, seconds: int) -> None:
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    texture = (24 * np.sin(xx / 7.0) * np.cos(yy / 5.0))[..., None]           # [H, W, 1]
    with av.open(path, "w") as c:
        s = c.add_stream("libx264", rate=Fraction(FPS))
        s.width, s.height, s.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        s.options = {"preset": "ultrafast", "crf": "23"}
        for t in range(seconds * FPS):
            colour = COLOURS[(t // (5 * FPS)) % len(COLOURS)]
            img = np.clip(colour + np.roll(texture, t, axis=1), 0, 255).astype(np.uint8)     # [H, W, 3]
            x = (8 * t) % (WIDTH - 60)
            img[150:210, x:x + 60] = 255
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = t
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    Path(path).with_suffix(".txt").write_text("a textured test video\n")


def ingest_in_fresh_process(video: str, out: str, scenes: bool) -> dict:
    code = ("import json, time; t = time.perf_counter(); "
            "from sora.data.ingest.run import ingest; from sora.data.ingest.options import IngestOptions; "
            f"s = ingest([{video!r}], {out!r}, opts=IngestOptions(scenes={scenes}), progress=False); "
            f"print(json.dumps({{'wall_s': time.perf_counter() - t, 'peak_rss_mb': {PEAK_RSS_MB}, "
            "'clips': s['clips'], 'seconds': s['seconds']}))")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def baseline_rss_mb() -> float:
    """Peak RSS of a process that imports ingest and does nothing (the part no video adds)."""
    code = f"import sora.data.ingest.run, sora.data.ingest.clips, scenedetect, cv2; print({PEAK_RSS_MB})"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    return float(r.stdout.strip())


def commit() -> str:
    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    return r.stdout.strip() + ("+dirty" if dirty else "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="5 s / 20 s videos only (a smoke run)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ingest_cpu.json"))
    a = p.parse_args()
    lengths = (5, 20) if a.quick else (10, 60, 600)
    env = {**environment("cpu"), "commit": commit(), "av": av.__version__,
           "ffmpeg_libavcodec": ".".join(map(str, av.library_versions["libavcodec"]))}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seconds in lengths:
            video = os.path.join(tmp, f"v{seconds}.mp4")
            t = time.perf_counter()
            make_video(video, seconds)
            made = time.perf_counter() - t
            for scenes in ((False, True) if seconds == lengths[1] else (False,)):
                load = os.getloadavg()[0]
                r = ingest_in_fresh_process(video, os.path.join(tmp, f"out{seconds}{scenes}"), scenes)
                row = {"video_seconds": seconds, "size": f"{WIDTH}x{HEIGHT}", "fps": FPS, "scenes": scenes,
                       "workers": 1, **{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()},
                       "video_s_per_wall_s_per_worker": round(seconds / r["wall_s"], 2),
                       "loadavg_1m_before": round(load, 2), "video_file_mb": round(os.path.getsize(video) / 2**20, 2),
                       "make_video_s": round(made, 1)}
                rows.append(row)
                print(json.dumps(row))
    base = baseline_rss_mb()
    plain = [r for r in rows if not r["scenes"]]
    result = {"env": {**env, "loadavg_1m_at_end": os.getloadavg()[0]}, "baseline_rss_mb": round(base, 1),
              "rows": rows,
              "rss_growth_mb_longest_vs_shortest": round(plain[-1]["peak_rss_mb"] - plain[0]["peak_rss_mb"], 1),
              "notes": "peak_rss_mb is VmHWM of a fresh process ingesting one file (one worker); "
                       "baseline_rss_mb: the same process importing ingest only. Throughput counts source seconds "
                       "(all of each video ends up in clips: default --clip-seconds 0:10)."}
    write_json(Path(a.out), result)
    print(f"wrote {a.out}: growth {result['rss_growth_mb_longest_vs_shortest']} MB from "
          f"{plain[0]['video_seconds']} s to {plain[-1]['video_seconds']} s")


if __name__ == "__main__":
    main()
