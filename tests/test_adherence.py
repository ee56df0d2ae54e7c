"""Prompt-adherence scoring on rendered (and mp4 round-tripped) moving-shapes clips."""
import math

import numpy as np
import pytest

from sora.data.video_io import decode_video, encode_mp4
from sora.data.world import COLOURS, DIRECTIONS, SHAPES, caption, render_clip
from sora.eval.adherence import score_clip, summarise


@pytest.mark.parametrize("colour", list(COLOURS))
def test_colour_and_direction_detected(colour):
    rng = np.random.default_rng(0)
    for i, direction in enumerate(DIRECTIONS):
        shape = SHAPES[i % len(SHAPES)]
        clip = decode_video(encode_mp4(render_clip(colour, shape, direction, 9, 32, 48, rng), 8))  # [T, H, W, 3]
        score = score_clip(clip, caption(colour, shape, direction))
        assert score.pop("travel_px") >= 3
        assert score == {"colour": colour, "direction": direction, "colour_ok": True, "motion_ok": True}


def test_dim_noisy_clip_still_scored_right():
    rng = np.random.default_rng(1)
    for colour in COLOURS:
        for direction in DIRECTIONS:
            clip = render_clip(colour, "circle", direction, 9, 40, 40, rng) * 0.6 + rng.normal(0, 20, (9, 40, 40, 3))
            clip[4] = 0  # a frame with no foreground at all is ignored
            clip = np.clip(clip, 0, 255).astype(np.uint8)
            score = score_clip(clip, caption(colour, "circle", direction))
            assert score["colour_ok"] and score["motion_ok"], (colour, direction, score)


def test_wrong_colour_static_clip_and_image():
    rng = np.random.default_rng(2)
    clip = render_clip("green", "square", "left", 9, 32, 32, rng)
    score = score_clip(clip, "a red square moving left")
    assert score["colour"] == "green" and not score["colour_ok"] and score["motion_ok"]

    static = np.repeat(clip[:1], 9, axis=0)  # no motion at all
    score = score_clip(static, "a green square moving left")
    assert score["direction"] is None and score["motion_ok"] is False and score["colour_ok"]

    image = score_clip(clip[:1], "a green square moving left")
    assert image["direction"] is None and image["motion_ok"] is None and image["colour_ok"]

    black = score_clip(np.zeros((5, 32, 32, 3), np.uint8), "a green square moving left")
    assert black == {"colour": None, "direction": None, "travel_px": 0.0, "colour_ok": False, "motion_ok": False}
    other = score_clip(clip, "not a world caption")
    assert other["colour_ok"] is False and other["motion_ok"] is None and other["travel_px"] is None


@pytest.mark.parametrize("frames", [9, 17])
def test_motion_needs_three_pixels_the_prompts_way(frames):
    """A shape that drifts under 3 px over the clip stands still; 3 px or more the prompt's way moves."""
    clip = np.zeros((frames, 48, 48, 3), np.uint8)                  # [T, H, W, 3]
    for travel, moves in ((2.0, False), (4.0, True)):
        for t in range(frames):
            x = 10 + round(travel * t / (frames - 1))
            clip[t] = 0
            clip[t, 20:34, x:x + 14] = COLOURS["blue"]
        score = score_clip(clip, "a blue square moving right")
        assert score["travel_px"] == pytest.approx(travel, abs=0.6) and score["motion_ok"] is moves, score
        assert score_clip(clip, "a blue square moving left")["travel_px"] == pytest.approx(-travel, abs=0.6)


def test_summarise():
    scores = [
        {"colour_ok": True, "motion_ok": True, "travel_px": 6.0},
        {"colour_ok": False, "motion_ok": False, "travel_px": 1.0},
        {"colour_ok": True, "motion_ok": None, "travel_px": None},
    ]
    out = summarise(scores)
    assert out["n"] == 3 and out["colour_accuracy"] == pytest.approx(2 / 3) and out["motion_accuracy"] == 0.5
    assert out["median_travel_px"] == 3.5
    assert math.isnan(summarise([])["colour_accuracy"])
