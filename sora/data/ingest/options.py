"""What `sora ingest` is asked to do: the options that shape its output, checked once, up front."""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

DEFAULT_MAX_PIXELS = 8192 * 8192     # one frame above this is refused before it is decoded (bombs)
CRF = 18                             # h264 quality of stored clips: visually lossless for real footage


class IngestError(ValueError):
    """A bad command line or manifest: the run refuses to start, naming what is wrong."""


@dataclass(frozen=True)
class IngestOptions:
    split: str = "train"
    min_seconds: float = 0.0          # sources (or manifest clips) shorter than this: too_short
    max_seconds: float = math.inf     # longer than this: too_long
    clip_min: float = 0.0             # a shot / window shorter than this is dropped (too_short)
    clip_max: float = 10.0            # longer shots are cut into consecutive windows of at most this
    scenes: bool = False              # cut at shot boundaries (PySceneDetect's ContentDetector)
    min_side: int = 8                 # short side below this (after rotation): too_small
    max_side: int = 720               # short side above this is scaled down to it (aspect kept)
    max_aspect: float = math.inf      # long side / short side above this: too_wide
    fps_max: float = math.inf         # higher frame rates are resampled down to this
    min_motion: float = 0.0           # clips whose motion score is below this: static
    samples_per_shard: int = 64
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self):
        if not re.fullmatch(r"[A-Za-z0-9_]+", self.split):
            raise IngestError(f"--split {self.split!r}: use letters, digits and '_' only "
                              "(shards are named SPLIT-*.tar)")
        checks = [
            (self.min_seconds >= 0, f"--min-seconds {self.min_seconds} must be >= 0"),
            (self.max_seconds > self.min_seconds, f"--max-seconds {self.max_seconds} must exceed --min-seconds"),
            (0 <= self.clip_min <= self.clip_max and self.clip_max > 0,
             f"--clip-seconds {self.clip_min}:{self.clip_max} needs 0 <= MIN <= MAX and MAX > 0"),
            (self.min_side >= 2, f"--min-side {self.min_side} must be >= 2 (h264 stores even sizes)"),
            (self.max_side >= self.min_side, f"--max-side {self.max_side} must be >= --min-side {self.min_side}"),
            (self.max_aspect >= 1, f"--max-aspect {self.max_aspect} must be >= 1"),
            (self.fps_max > 0, f"--fps-max {self.fps_max} must be > 0"),
            (self.min_motion >= 0, f"--min-motion {self.min_motion} must be >= 0"),
            (self.samples_per_shard >= 1, f"--samples-per-shard {self.samples_per_shard} must be >= 1"),
            (self.max_pixels >= 4, f"--max-pixels {self.max_pixels} must be >= 4"),
        ]
        for ok, message in checks:
            if not ok:
                raise IngestError(message)

    def fingerprint(self) -> dict:
        """What decides the output bytes (JSON-safe: infinities become null)."""
        return {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in asdict(self).items()}


def parse_clip_seconds(text: str) -> tuple[float, float]:
    """'MIN:MAX' (either may be empty: defaults 0 and 10) -> (min, max) seconds."""
    parts = text.split(":")
    if len(parts) != 2:
        raise IngestError(f"--clip-seconds {text!r}: give MIN:MAX in seconds, e.g. 2:10")
    try:
        lo = float(parts[0]) if parts[0].strip() else 0.0
        hi = float(parts[1]) if parts[1].strip() else 10.0
    except ValueError:
        raise IngestError(f"--clip-seconds {text!r}: MIN and MAX must be numbers") from None
    return lo, hi
