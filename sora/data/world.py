"""The synthetic "moving shapes" world: captions, held-out combos and a numpy renderer.

One filled shape of one colour on black, moving in a straight line at constant speed.
Small enough to train on CPUs, rich enough to check text, motion and layout adherence.
"""
from __future__ import annotations

import itertools
import re

import numpy as np

# Bumped when the same seed renders different clips; recorded in the dataset's manifest.json.
# 2: a clip's start no longer gives its direction away (see render_clip).
# 3: clips of 9, 17 and 33 frames (sora/data/synth.py), twice as long as before.
WORLD_VERSION = 3

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "white": (255, 255, 255),
    "magenta": (255, 0, 255),
}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("left", "right", "up", "down")

# Never used for training clips: tests compositional generalisation. Each colour appears at most
# twice, each shape and direction 2-3 times, so every attribute stays common in training.
HELDOUT_COMBOS: tuple[tuple[str, str, str], ...] = (
    ("red", "circle", "left"),
    ("green", "square", "up"),
    ("blue", "triangle", "right"),
    ("yellow", "circle", "down"),
    ("white", "square", "left"),
    ("magenta", "triangle", "up"),
    ("red", "triangle", "down"),
    ("blue", "square", "right"),
)

ALL_COMBOS: tuple[tuple[str, str, str], ...] = tuple(itertools.product(COLOURS, SHAPES, DIRECTIONS))
TRAIN_COMBOS: tuple[tuple[str, str, str], ...] = tuple(c for c in ALL_COMBOS if c not in HELDOUT_COMBOS)

_CAPTION_RE = re.compile(
    r"^\s*an?\s+(%s)\s+(%s)\s+moving\s+(%s)\s*\.?\s*$"
    % ("|".join(COLOURS), "|".join(SHAPES), "|".join(DIRECTIONS)),
    re.IGNORECASE,
)

# Shape size, and the least travel, as fractions of the frame (see render_clip).
SIZE_RANGE = (0.30, 0.45)
MIN_TRAVEL = 0.15


def caption(colour: str, shape: str, direction: str) -> str:
    return f"a {colour} {shape} moving {direction}"


def parse_caption(text: str) -> tuple[str, str, str] | None:
    """(colour, shape, direction) of a world caption, or None if `text` is not one."""
    if not isinstance(text, str):
        return None
    m = _CAPTION_RE.match(" ".join(text.split()))
    if m is None:
        return None
    return m.group(1).lower(), m.group(2).lower(), m.group(3).lower()


def _shape_mask(shape: str, top: float, left: float, size: float, height: int, width: int) -> np.ndarray:
    """Boolean [H, W] mask of `shape` in the box [top, top+size) x [left, left+size), tested at pixel centres."""
    ys = np.arange(height, dtype=np.float64)[:, None] + 0.5  # [H, 1]
    xs = np.arange(width, dtype=np.float64)[None, :] + 0.5  # [1, W]
    v = (ys - top) / size  # [H, 1], 0..1 inside the box
    u = (xs - left) / size  # [1, W]
    if shape == "square":
        return (v >= 0) & (v <= 1) & (u >= 0) & (u <= 1)
    if shape == "circle":
        return (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    if shape == "triangle":  # apex up, base at the bottom of the box
        return (v >= 0) & (v <= 1) & (np.abs(u - 0.5) <= v / 2)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def render_clip(
    colour: str, shape: str, direction: str, frames: int, height: int, width: int, rng: np.random.Generator
) -> np.ndarray:
    """Render one clip as uint8 [T, H, W, 3]; "up" means decreasing row index."""
    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}; expected one of {tuple(COLOURS)}")
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; expected one of {DIRECTIONS}")
    if frames < 1 or height < 8 or width < 8:
        raise ValueError(f"need frames >= 1 and height, width >= 8; got {frames}, {height}, {width}")

    size = rng.uniform(*SIZE_RANGE) * min(height, width)
    # Position of the box's top-left corner at each frame, along rows (y) and columns (x).
    y0 = rng.uniform(0, height - size)
    x0 = rng.uniform(0, width - size)
    ys = np.full(frames, y0)  # [T]
    xs = np.full(frames, x0)  # [T]
    if frames > 1:
        horizontal = direction in ("left", "right")
        extent = width if horizontal else height
        free = extent - size                     # where the box's corner may be along the motion
        least = min(MIN_TRAVEL * extent, free)
        sign = 1.0 if direction in ("right", "down") else -1.0
        # The start is uniform over every place that leaves room for the least travel, and the
        # travel uses a random share of the room ahead. A start drawn from the direction-specific
        # range a fixed long travel leaves (e.g. "right" only from the left edge) would give the
        # direction away from the first frame, and a model would learn the position, not the word.
        start = rng.uniform(0, free - least)
        travel = rng.uniform(least, free - start)             # the room ahead is at least `least`
        if sign < 0:
            start = free - start                 # mirror: the same law moving the other way
        path = start + sign * travel * np.linspace(0.0, 1.0, frames)  # [T]
        if horizontal:
            xs = path
        else:
            ys = path

    out = np.zeros((frames, height, width, 3), dtype=np.uint8)  # [T, H, W, 3]
    rgb = np.array(COLOURS[colour], dtype=np.uint8)
    for t in range(frames):
        out[t][_shape_mask(shape, ys[t], xs[t], size, height, width)] = rgb
    return out
