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


# ---------------------------------------------------------------- hardening: fps, token bounds, mixing

MAX_FPS_STRIDE = 8   # data.fps never takes fewer than 1 in 8 of a clip's frames


def fps_stride(fps: float, target_fps: float) -> int:
    """Take every n-th frame so a clip at `fps` plays at about `target_fps` (1: keep every frame)."""
    if target_fps <= 0 or fps <= target_fps:
        return 1
    return min(MAX_FPS_STRIDE, max(1, round(fps / target_fps)))


def decode_cap(max_frames: int, fps: float, target_fps: float) -> int:
    """Frames to decode so that, after fps sampling, max_frames remain (decoding is capped by this)."""
    return 1 + (max_frames - 1) * fps_stride(fps, target_fps)


def prepare_sample(frames: np.ndarray, fps: float, key: str, data_cfg, ft: int, fh: int, patch, stats):
    """uint8 [T, H, W, 3] -> (video [3, T', H', W'] in [-1, 1], effective fps), or None after counting why.

    Frames are taken at about data.fps (when > 0), the clip is snapped to the VAE x patch factors and
    shrunk (aspect kept) to data.max_tokens_per_sample; below data.min_tokens_per_sample it is skipped."""
    stride = fps_stride(fps, getattr(data_cfg, "fps", 0.0))
    frames = frames[::stride]
    shape = target_shape(frames.shape[0], frames.shape[1], frames.shape[2], ft, fh, patch, data_cfg.max_frames,
                         data_cfg.max_tokens_per_sample)
    if shape is None:
        stats.skip("too_small", key, f"{frames.shape} makes no token")
        return None
    if tokens_for(*shape, ft, fh, patch) < getattr(data_cfg, "min_tokens_per_sample", 1):
        stats.skip("too_few_tokens", key, f"{shape} makes {tokens_for(*shape, ft, fh, patch)} tokens")
        return None
    return to_model_video(frames, shape), fps / stride


def mix_images(items, image_ratio: float, rng: np.random.Generator, is_image, max_wait: int = 256):
    """Re-order a stream so that about `image_ratio` of what comes out are images (is_image(item)).

    Items wait in two queues; each output draws the kind by the ratio and takes the other kind when
    that queue is empty. Nothing is dropped, and a queue never holds more than `max_wait` items
    (then it is drained first), so a stream with too few of one kind keeps flowing."""
    if image_ratio < 0:
        yield from items
        return
    queues: tuple[list, list] = ([], [])            # videos, images
    it = iter(items)
    done = False
    while True:
        while not done and (not queues[0] or not queues[1]):
            try:
                item = next(it)
            except StopIteration:
                done = True
                break
            queues[bool(is_image(item))].append(item)
            if len(queues[0]) > max_wait or len(queues[1]) > max_wait:
                break
        if not queues[0] and not queues[1]:
            return
        full = [q for q in queues if len(q) > max_wait]
        if full:
            q = full[0]
        else:
            want = int(rng.random() < image_ratio)
            q = queues[want] if queues[want] else queues[1 - want]
        yield q.pop(0)


# ---------------------------------------------------------------- per-epoch order (raw and latent streams)

def epoch_shard_order(paths: list[str], seed: int, epoch: int, dp_rank: int, shared: bool) -> list[str]:
    """This epoch's shard order; ranks that slice one shared sample sequence (`shared`) must agree on it."""
    rng = np.random.default_rng([seed, epoch, 0 if shared else dp_rank + 1])
    return [paths[i] for i in rng.permutation(len(paths))]


def shuffle_buffered(items, rng: np.random.Generator, size: int):
    """Stream shuffle: hold `size` items, emit a random one per arrival, then the rest shuffled."""
    buffer = []
    for item in items:
        buffer.append(item)
        if len(buffer) >= size:
            yield buffer.pop(int(rng.integers(len(buffer))))
    rng.shuffle(buffer)
    yield from buffer
