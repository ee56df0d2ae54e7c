"""Where clips start and end: shot boundaries (PySceneDetect's ContentDetector) and windows.

All positions are frame indices on the constant-rate timeline the decoder produces, so the shot
detector and the clip writer agree on every frame.
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Iterable

import numpy as np

CUT_THRESHOLD = 27.0       # ContentDetector's default: mean HSV change that marks a hard cut
MIN_SHOT_SECONDS = 0.25    # two cuts closer than this are one (camera flashes)


def detect_shots(frames: Iterable[tuple[int, np.ndarray, bool]], rate: Fraction) -> tuple[list[int], int]:
    """(indices where a new shot starts, after 0; frames seen) from small BGR frames [H, W, 3]."""
    try:
        from scenedetect import ContentDetector, FrameTimecode
    except ImportError as e:
        raise RuntimeError(f"--scenes needs PySceneDetect: pip install scenedetect-headless ({e})") from None
    detector = ContentDetector(threshold=CUT_THRESHOLD, min_scene_len=max(1, math.ceil(MIN_SHOT_SECONDS * rate)))
    cuts: list[int] = []
    n = 0
    for k, bgr, _ in frames:
        cuts += [tc.frame_num for tc in detector.process_frame(FrameTimecode(k, fps=rate), bgr)]
        n = k + 1
    if n:
        cuts += [tc.frame_num for tc in detector.post_process(FrameTimecode(n - 1, fps=rate))]
    return sorted({c for c in cuts if 0 < c < n}), n


def split_shot(begin: int, end: int, min_frames: int, max_frames: int) -> tuple[list[tuple[int, int]], int]:
    """(consecutive windows [a, b) of shot [begin, end), frames dropped), windows of min..max frames.

    A shot longer than max_frames is cut into equal windows (no short leftover) when those stay at
    least min_frames long, else into max_frames windows and the leftover is dropped; a shot shorter
    than min_frames is dropped whole."""
    length = end - begin
    if length < max(1, min_frames):
        return [], length
    n = math.ceil(length / max_frames)
    if length // n >= min_frames:
        bounds = [begin + (i * length) // n for i in range(n + 1)]
    else:
        n = length // max_frames
        bounds = [begin + i * max_frames for i in range(n + 1)]
    return list(zip(bounds[:-1], bounds[1:])), end - bounds[-1]


def plan_windows(cuts: list[int], total: int, min_frames: int, max_frames: int):
    """([(shot index, first frame, end frame)] of every clip to write, [(shot, frames dropped)])."""
    edges = [0] + cuts + [total]
    windows, dropped = [], []
    for shot, (s, e) in enumerate(zip(edges[:-1], edges[1:])):
        ws, lost = split_shot(s, e, min_frames, max_frames)
        windows += [(shot, a, b) for a, b in ws]
        if lost:
            dropped.append((shot, lost))
    return windows, dropped


def motion_score(prev: np.ndarray, frame: np.ndarray) -> float:
    """Mean absolute difference of two uint8 frames [H, W, 3], on the 0..255 scale (every 4th pixel
    of every 4th row: the same number within a few per cent, 16 times cheaper)."""
    a, b = prev[::4, ::4].astype(np.int16), frame[::4, ::4].astype(np.int16)    # [H/4, W/4, 3]
    return float(np.abs(a - b).mean())
