"""Raw video shards -> prepared samples: each clip keeps its own duration and resolution, taken at
about data.fps, snapped to the shape rules (sora/shapes.py) and capped by a token budget with the
aspect ratio kept. `VideoStream` is the sample stream of raw shards (sora/data/stream.py)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from sora.data.shards import Group, decode_media
from sora.data.stream import Decoded, SampleStream
from sora.shapes import ShapeRules

MAX_FPS_STRIDE = 8   # data.fps never takes fewer than 1 in 8 of a clip's frames


def fps_stride(fps: float, target_fps: float) -> int:
    """Take every n-th frame so a clip at `fps` plays at about `target_fps` (1: keep every frame)."""
    if target_fps <= 0 or fps <= target_fps:
        return 1
    return min(MAX_FPS_STRIDE, max(1, round(fps / target_fps)))


def decode_cap(max_frames: int, fps: float, target_fps: float) -> int:
    """Frames to decode so that, after fps sampling, max_frames remain (decoding is capped by this)."""
    return 1 + (max_frames - 1) * fps_stride(fps, target_fps)


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


def prepare_sample(frames: np.ndarray, fps: float, key: str, data_cfg, rules: ShapeRules, stats):
    """uint8 [T, H, W, 3] -> (video [3, T', H', W'] in [-1, 1], effective fps), or None after counting why.

    Frames are taken at about data.fps (when > 0), the clip is snapped to the shape rules and
    shrunk (aspect kept) to data.max_tokens_per_sample; below data.min_tokens_per_sample it is skipped."""
    stride = fps_stride(fps, data_cfg.fps)
    frames = frames[::stride]
    shape = rules.fit(*frames.shape[:3], data_cfg.max_frames, data_cfg.max_tokens_per_sample)
    if shape is None:
        stats.skip("too_small", key, f"{frames.shape} makes no token")
        return None
    if rules.tokens(*shape) < data_cfg.min_tokens_per_sample:
        stats.skip("too_few_tokens", key, f"{shape} makes {rules.tokens(*shape)} tokens")
        return None
    return to_model_video(frames, shape), fps / stride


class VideoStream(SampleStream):
    """The sample stream of raw shards: videos [3, T, H, W] in [-1, 1], prepared by `prepare_sample`.
    Decoding reads no more frames than data.max_frames at data.fps needs, of at most max_pixels each."""

    def __init__(self, *args, max_pixels: int = 1024 * 1024, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_pixels = max_pixels

    def decode(self, group: Group, caption: str, fps: float) -> Decoded | None:
        frames = decode_media(group, self.stats, decode_cap(self.cfg.max_frames, fps, self.cfg.fps), self.max_pixels)
        if frames is None:
            return None
        prepared = prepare_sample(frames, fps, group.key, self.cfg, self.rules, self.stats)
        return None if prepared is None else Decoded(group.key, prepared[0], caption, prepared[1])
