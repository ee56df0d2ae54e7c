"""Hardened sample preparation: fps-aware frame sampling, token bounds, image/video mixing."""
import numpy as np
import pytest

from sora.config import load_config
from sora.data.pipeline import decode_cap, fps_stride, prepare_sample
from sora.data.shards import SkipStats
from sora.data.stream import mix_images
from sora.shapes import ShapeRules

ROOT = __file__.rsplit("/tests/", 1)[0]
RULES = ShapeRules(2, 4, (1, 2, 2))


@pytest.mark.parametrize("fps,target,stride", [(8, 0, 1), (8, 8, 1), (6, 8, 1), (24, 8, 3), (30, 8, 4),
                                               (25, 12, 2), (240, 8, 8)])
def test_fps_stride(fps, target, stride):
    assert fps_stride(fps, target) == stride
    assert decode_cap(9, fps, target) == 1 + 8 * stride


def _cfg(*over):
    return load_config(f"{ROOT}/configs/demo.yaml", list(over)).data


def test_prepare_sample_fps_and_token_bounds():
    frames = np.zeros((33, 40, 56, 3), np.uint8)
    frames[:, :, :, 0] = np.arange(33, dtype=np.uint8)[:, None, None] * 7        # frame index in the red channel
    stats = SkipStats()
    video, fps = prepare_sample(frames, 24.0, "k", _cfg("data.fps=8", "data.max_frames=9"), RULES, stats)
    assert fps == 8.0 and video.shape[1] == 9
    red = ((video[0, :, 0, 0] + 1) * 127.5).round().numpy()
    assert red.tolist() == [7 * 3 * i for i in range(9)]                       # frames 0, 3, 6, ... (24 -> 8 fps)
    # no data.fps: every frame
    video, fps = prepare_sample(frames, 24.0, "k", _cfg("data.fps=0", "data.max_frames=9"), RULES, stats)
    assert fps == 24.0 and ((video[0, :, 0, 0] + 1) * 127.5).round().tolist() == [7 * i for i in range(9)]
    # max tokens: shrunk (aspect kept) under the budget; min tokens: skipped and counted
    cfg = _cfg("data.fps=0", "data.max_frames=9", "data.max_tokens_per_sample=60", "data.min_tokens_per_sample=20")
    video, _ = prepare_sample(frames, 8.0, "k", cfg, RULES, stats)
    assert RULES.tokens(*video.shape[1:]) <= 60
    assert prepare_sample(frames[:1, :16, :16], 8.0, "small", cfg, RULES, stats) is None   # 4 tokens
    assert prepare_sample(frames[:, :4, :4], 8.0, "none", cfg, RULES, stats) is None       # no token
    assert stats.as_dict() == {"too_few_tokens": 1, "too_small": 1}


def test_mix_images_ratio_and_nothing_lost():
    rng = np.random.default_rng(0)
    items = [("img" if rng.random() < 0.1 else "vid", i) for i in range(4000)]   # 10 % images in the shards
    for ratio in (0.5, 0.25):
        out = list(mix_images(items, ratio, np.random.default_rng(1), lambda x: x[0] == "img", max_wait=4000))
        assert sorted(out, key=lambda x: x[1]) == items                         # a re-ordering: nothing dropped
        head = out[:600]                                                        # while both kinds are available
        assert abs(sum(x[0] == "img" for x in head) / len(head) - ratio) < 0.06
    assert list(mix_images(items, -1, rng, lambda x: x[0] == "img")) == items  # < 0: as they come
    # a bounded wait: with max_wait 8, a stream of only videos flows after at most 9 items read ahead
    only = [("vid", i) for i in range(50)]
    assert list(mix_images(only, 1.0, rng, lambda x: x[0] == "img", max_wait=8)) == only
