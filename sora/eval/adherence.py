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
MIN_DISPLACEMENT = 1.5  # px over the clip, along the dominant axis, to call it motion

_NAMES = tuple(COLOURS)
_UNIT = np.array([COLOURS[n] for n in _NAMES], dtype=np.float64) / 255.0  # [K, 3], max channel 1


def _detect_colour(frames: np.ndarray, fg: np.ndarray) -> str | None:
    if not fg.any():
        return None
    mean = frames[fg].astype(np.float64).mean(axis=0)  # [3]
    mean /= mean.max()  # chroma only: a dim red is still red
    return _NAMES[int(np.argmin(((_UNIT - mean) ** 2).sum(axis=1)))]


def _detect_direction(bright: np.ndarray, fg: np.ndarray) -> str | None:
    """Fit a line to the brightness-weighted foreground centroid over time."""
    t, h, w = fg.shape
    weight = np.where(fg, bright, 0.0)  # [T, H, W]
    mass = weight.sum(axis=(1, 2))  # [T]
    valid = fg.sum(axis=(1, 2)) >= max(MIN_FG_PIXELS, MIN_FG_FRACTION * h * w)  # [T]
    if valid.sum() < 2:
        return None
    ts = np.nonzero(valid)[0].astype(np.float64)  # [V]
    cy = (weight[valid].sum(axis=2) * np.arange(h)).sum(axis=1) / mass[valid]  # [V]
    cx = (weight[valid].sum(axis=1) * np.arange(w)).sum(axis=1) / mass[valid]  # [V]
    dy = np.polyfit(ts, cy, 1)[0] * (t - 1)  # displacement over the whole clip
    dx = np.polyfit(ts, cx, 1)[0] * (t - 1)
    if max(abs(dx), abs(dy)) < MIN_DISPLACEMENT:
        return None
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def score_clip(frames: np.ndarray, caption: str) -> dict:
    """Score uint8 [T, H, W, 3] against its caption.

    Returns {"colour", "direction", "colour_ok", "motion_ok"}; direction and motion_ok are None for
    single frames. An unparseable caption gives colour_ok False and motion_ok None.
    """
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames [T, H, W, 3]; got shape {frames.shape}")
    bright = frames.max(axis=-1).astype(np.float64)  # [T, H, W]
    fg = bright > FG_THRESHOLD  # [T, H, W]
    colour = _detect_colour(frames, fg)
    single = frames.shape[0] == 1
    direction = None if single else _detect_direction(bright, fg)
    expected = parse_caption(caption)
    return {
        "colour": colour,
        "direction": direction,
        "colour_ok": expected is not None and colour == expected[0],
        "motion_ok": None if single or expected is None else direction == expected[2],
    }


def summarise(scores: list[dict]) -> dict:
    """Accuracies over a list of score_clip results; motion only over clips where it applies (nan if none)."""
    motion = [s["motion_ok"] for s in scores if s.get("motion_ok") is not None]
    return {
        "colour_accuracy": float(np.mean([bool(s["colour_ok"]) for s in scores])) if scores else math.nan,
        "motion_accuracy": float(np.mean(motion)) if motion else math.nan,
        "n": len(scores),
        "n_motion": len(motion),
    }
