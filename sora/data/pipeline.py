"""Per-sample preparation: keep each clip's own duration and resolution, snapped to the
VAE x patch factors and capped by a token budget with aspect ratio preserved."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def tokens_for(frames: int, height: int, width: int, ft: int, fh: int, patch) -> int:
    pt, ph, pw = patch
    return ((frames - 1) // ft + 1) // pt * (height // (fh * ph)) * (width // (fh * pw))


def target_shape(frames, height, width, ft, fh, patch, max_frames, max_tokens):
    """(T, H, W) to train on, or None when the clip is too small to make a single token."""
    pt, ph, pw = patch
    t = 1 + ft * ((min(frames, max_frames) - 1) // ft)
    while t > 1 and ((t - 1) // ft + 1) % pt:
        t -= ft
    if ((t - 1) // ft + 1) % pt:
        return None
    mh, mw = fh * ph, fh * pw
    h, w = height // mh * mh, width // mw * mw
    if h == 0 or w == 0:
        return None
    n = tokens_for(t, h, w, ft, fh, patch)
    if n > max_tokens:                                 # shrink space first (aspect kept), then time
        s = math.sqrt(max_tokens / n)
        h, w = max(mh, int(h * s) // mh * mh), max(mw, int(w * s) // mw * mw)
        while t > 1 and tokens_for(t, h, w, ft, fh, patch) > max_tokens:
            t -= ft * pt
        if tokens_for(t, h, w, ft, fh, patch) > max_tokens:
            return None
    return t, h, w


def to_model_video(frames: np.ndarray, shape) -> torch.Tensor:
    """frames uint8 [T, H, W, 3] -> float [3, T', H', W'] in [-1, 1] at `shape` (resize then centre crop)."""
    t, h, w = shape
    x = torch.from_numpy(np.array(frames[:t])).permute(3, 0, 1, 2).float() / 127.5 - 1.0  # [3, T, H, W]
    _, _, H, W = x.shape
    s = max(h / H, w / W)
    if s < 1.0:  # downscale with area averaging, aspect kept, then crop the excess
        rh, rw = max(h, round(H * s)), max(w, round(W * s))
        x = F.interpolate(x, size=(rh, rw), mode="area")
        H, W = rh, rw
    top, left = (H - h) // 2, (W - w) // 2
    return x[:, :, top:top + h, left:left + w].contiguous()
