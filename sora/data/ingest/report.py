"""Counting what ingest did: files seen, clips and seconds written, every skip by a short reason name,
and a capped list of examples. A tally per chunk of work; tallies add up into DIR/ingest_report.json."""
from __future__ import annotations

import logging

log = logging.getLogger("sora.ingest")

MAX_EXAMPLES = 50           # (path, reason, detail) rows kept in the report
_warned: set[str] = set()   # reasons already logged by this process (each is logged once)


class Tally:
    def __init__(self) -> None:
        self.files = 0              # sources looked at (files, manifest rows, entries that failed listing)
        self.clips = 0              # samples written (images count as 1-frame clips)
        self.frames = 0
        self.seconds = 0.0          # seconds of video written (an image adds 0)
        self.skipped: dict[str, int] = {}      # reason -> count (a file, or a clip of one)
        self.partial: dict[str, int] = {}      # reason -> files that gave some clips, then stopped
        self.examples: list[list[str]] = []    # [path, reason, detail]

    def skip(self, path: str, reason: str, detail: str = "", partial: bool = False) -> None:
        counts = self.partial if partial else self.skipped
        counts[reason] = counts.get(reason, 0) + 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append([path, reason, detail])
        if reason not in _warned:
            _warned.add(reason)
            log.warning("%s %s: %s%s (further %r are only counted)", "partial" if partial else "skipping",
                        path, reason, f" ({detail})" if detail else "", reason)

    def as_dict(self) -> dict:
        return {"files": self.files, "clips": self.clips, "frames": self.frames,
                "seconds": round(self.seconds, 3), "skipped": dict(sorted(self.skipped.items())),
                "partial": dict(sorted(self.partial.items())), "examples": self.examples}

    @classmethod
    def total(cls, records: list[dict]) -> dict:
        """Sum of as_dict() records, in order (the examples list stays capped)."""
        out = {"files": 0, "clips": 0, "frames": 0, "seconds": 0.0, "skipped": {}, "partial": {}, "examples": []}
        for r in records:
            for key in ("files", "clips", "frames", "seconds"):
                out[key] += r[key]
            for key in ("skipped", "partial"):
                for reason, n in r[key].items():
                    out[key][reason] = out[key].get(reason, 0) + n
            out["examples"] += r["examples"][:MAX_EXAMPLES - len(out["examples"])]
        out["seconds"] = round(out["seconds"], 3)
        out["skipped"] = dict(sorted(out["skipped"].items()))
        out["partial"] = dict(sorted(out["partial"].items()))
        return out


# What a reason means, for the summary (the report keeps only the short names).
REASONS = {
    "not_found": "file does not exist",
    "unreadable": "file or directory cannot be read",
    "symlink_loop": "directory reached again through a symlink",
    "duplicate": "same file listed twice",
    "empty_file": "0 bytes",
    "missing_caption": "no NAME.txt / NAME.json beside it and no manifest row",
    "non_utf8": "caption is not UTF-8",
    "bad_caption": "sidecar JSON without a string 'caption'",
    "no_video_stream": "no video stream (audio only?)",
    "decode_error": "FFmpeg cannot decode it (or a clip of it)",
    "no_frames": "video stream without a decodable frame",
    "too_large": "frame over --max-pixels (refused before decoding)",
    "too_small": "short side under --min-side",
    "too_wide": "aspect over --max-aspect",
    "too_short": "under --min-seconds (file) or the --clip-seconds minimum (clip)",
    "too_long": "over --max-seconds",
    "static": "motion score under --min-motion",
    "bad_range": "manifest start/end outside the video or end <= start",
    "internal_error": "a bug in sora ingest met this file (logged with its traceback)",
    "truncated": "decoded to less than 90% of the length its header gives",
}


def summary_text(report: dict) -> str:
    """The one-screen summary printed at the end of a run."""
    lines = [f"sora ingest -> {report['out']}",
             f"  files seen      {report['files']}",
             f"  clips written   {report['clips']} ({report['frames']} frames, {report['seconds']:.1f} s of video) "
             f"in {len(report['shards'])} shards"]
    if report.get("elapsed_s"):
        lines.append(f"  wall time       {report['elapsed_s']:.1f} s")
    if report["skipped"]:
        lines.append("  skipped (files or clips):")
        for reason, n in sorted(report["skipped"].items(), key=lambda kv: -kv[1]):
            lines.append(f"    {reason:16s}{n:7d}  {REASONS.get(reason, '')}")
    if report["partial"]:
        lines.append("  kept the clips before an error in:")
        for reason, n in sorted(report["partial"].items(), key=lambda kv: -kv[1]):
            lines.append(f"    {reason:16s}{n:7d}  files")
    if report["examples"]:
        lines.append(f"  examples ({min(len(report['examples']), 5)} of {len(report['examples'])} in "
                     f"ingest_report.json):")
        for path, reason, detail in report["examples"][:5]:
            lines.append(f"    {reason}: {path}" + (f" ({detail[:80]})" if detail else ""))
    if "missing_caption" in report["skipped"]:
        lines.append("  captions: put NAME.txt (or NAME.json with {\"caption\": ...}) beside NAME.mp4, "
                     "or pass --captions FILE (CSV / JSONL / Parquet with path and caption columns)")
    return "\n".join(lines)
