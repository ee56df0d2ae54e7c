"""Prompt adherence of generated moving-shapes clips: is the colour right, does it move the right way?

Pure pixel statistics (no learned model), robust to dim colours and noisy frames.
"""
from __future__ import annotations

import math

import numpy as np

from sora.data.world import COLOURS, parse_caption

FG_THRESHOLD = 96  # max channel above this = foreground (the world's background is black)
MIN_FG_FRACTION = 0.002  # frames with less foreground than this are ignored for motion
MIN_FG_PIXELS = 3
MIN_DISPLACEMENT = 3.0  # px over the clip, along the dominant axis, to call it motion

_NAMES = tuple(COLOURS)
_UNIT = np.array([COLOURS[n] for n in _NAMES], dtype=np.float64) / 255.0  # [K, 3], max channel 1


def _detect_colour(frames: np.ndarray, fg: np.ndarray) -> str | None:
    if not fg.any():
        return None
    mean = frames[fg].astype(np.float64).mean(axis=0)  # [3]
    mean /= mean.max()  # chroma only: a dim red is still red
    return _NAMES[int(np.argmin(((_UNIT - mean) ** 2).sum(axis=1)))]


def _displacement(bright: np.ndarray, fg: np.ndarray) -> tuple[float, float] | None:
    """(dy, dx) px over the whole clip: a line fitted to the brightness-weighted foreground centroid
    over time; None with fewer than two frames showing a shape."""
    t, h, w = fg.shape
    weight = np.where(fg, bright, 0.0)  # [T, H, W]
    mass = weight.sum(axis=(1, 2))  # [T]
    valid = fg.sum(axis=(1, 2)) >= max(MIN_FG_PIXELS, MIN_FG_FRACTION * h * w)  # [T]
    if valid.sum() < 2:
        return None
    ts = np.nonzero(valid)[0].astype(np.float64)  # [V]
    cy = (weight[valid].sum(axis=2) * np.arange(h)).sum(axis=1) / mass[valid]  # [V]
    cx = (weight[valid].sum(axis=1) * np.arange(w)).sum(axis=1) / mass[valid]  # [V]
    return np.polyfit(ts, cy, 1)[0] * (t - 1), np.polyfit(ts, cx, 1)[0] * (t - 1)


def _direction(dy: float, dx: float) -> str | None:
    if max(abs(dx), abs(dy)) < MIN_DISPLACEMENT:
        return None
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def score_clip(frames: np.ndarray, caption: str) -> dict:
    """Score uint8 [T, H, W, 3] against its caption.

    Returns {"colour", "direction", "travel_px", "colour_ok", "motion_ok"}: motion_ok when the shape
    moves at least MIN_DISPLACEMENT px over the clip, mostly the caption's way; travel_px is its
    displacement along the caption's direction (negative: the other way). direction, travel_px and
    motion_ok are None for single frames; an unparseable caption gives colour_ok False and motion_ok None.
    """
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames [T, H, W, 3]; got shape {frames.shape}")
    bright = frames.max(axis=-1).astype(np.float64)  # [T, H, W]
    fg = bright > FG_THRESHOLD  # [T, H, W]
    colour = _detect_colour(frames, fg)
    expected = parse_caption(caption)
    moved = (0.0, 0.0) if frames.shape[0] == 1 else (_displacement(bright, fg) or (0.0, 0.0))   # (dy, dx)
    direction = _direction(*moved)
    travel = None if frames.shape[0] == 1 or expected is None else _along(*moved, expected[2])
    return {
        "colour": colour,
        "direction": direction,
        "travel_px": None if travel is None else round(travel, 2),
        "colour_ok": expected is not None and colour == expected[0],
        "motion_ok": None if frames.shape[0] == 1 or expected is None else direction == expected[2],
    }


def _along(dy: float, dx: float, direction: str) -> float:
    return {"left": -dx, "right": dx, "up": -dy, "down": dy}[direction]


def summarise(scores: list[dict]) -> dict:
    """Accuracies over a list of score_clip results; motion only over clips where it applies (nan if
    none), with the median travel along the prompt's direction."""
    motion = [s["motion_ok"] for s in scores if s.get("motion_ok") is not None]
    travel = [s["travel_px"] for s in scores if s.get("travel_px") is not None]
    return {
        "colour_accuracy": float(np.mean([bool(s["colour_ok"]) for s in scores])) if scores else math.nan,
        "motion_accuracy": float(np.mean(motion)) if motion else math.nan,
        "median_travel_px": float(np.median(travel)) if travel else math.nan,
        "n": len(scores),
        "n_motion": len(motion),
    }
