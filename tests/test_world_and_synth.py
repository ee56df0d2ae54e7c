"""The moving-shapes world, video/image encode/decode, and dataset synthesis."""
import json
import tarfile
from collections import Counter

import av
import numpy as np
import pytest
from PIL import ImageFile

from sora.data import synth, video_io
from sora.data.video_io import (FrameTooLargeError, VideoDecodeError, decode_image, decode_video, encode_mp4,
                                encode_png, write_video)
from sora.data.world import (ALL_COMBOS, COLOURS, DIRECTIONS, HELDOUT_COMBOS, MIN_TRAVEL, SHAPES, TRAIN_COMBOS,
                             caption, parse_caption, render_clip)


def _centroid(frame):  # [H, W, 3] -> (row, col)
    ys, xs = np.nonzero(frame.max(axis=-1))
    return ys.mean(), xs.mean()


def test_first_frame_does_not_give_the_direction_away():
    # Where the shape starts must say little about where it goes: otherwise a model learns
    # "move away from the nearer edge" and ignores the direction word.
    rng = np.random.default_rng(1)
    starts = {d: np.array([_centroid(render_clip("red", "square", d, 5, 48, 48, rng)[0])[1] for _ in range(300)])
              for d in ("left", "right")}
    xs = np.concatenate([starts["left"], starts["right"]])
    truth = np.r_[np.zeros(300), np.ones(300)]
    best = max(max(((xs < c) == truth).mean(), ((xs >= c) == truth).mean()) for c in np.unique(xs))
    assert best < 0.75, f"a threshold on the first frame's x tells left from right {best:.0%} of the time"


def test_caption_round_trip_and_tolerance():
    for combo in ALL_COMBOS:
        assert parse_caption(caption(*combo)) == combo
    assert parse_caption("  A  Red CIRCLE   moving Left ") == ("red", "circle", "left")
    for text in ("a red dog moving left", "red circle", "", "a red circle moving sideways"):
        assert parse_caption(text) is None


def test_heldout_combos_leave_every_attribute_in_training():
    assert len(HELDOUT_COMBOS) == 8 and len(set(HELDOUT_COMBOS)) == 8
    assert set(HELDOUT_COMBOS) <= set(ALL_COMBOS)
    assert max(Counter(c for c, _, _ in HELDOUT_COMBOS).values()) <= 2
    assert {d for _, _, d in HELDOUT_COMBOS} == set(DIRECTIONS)
    assert not set(TRAIN_COMBOS) & set(HELDOUT_COMBOS)
    for i, values in enumerate((COLOURS, SHAPES, DIRECTIONS)):
        counts = Counter(c[i] for c in TRAIN_COMBOS)
        assert set(counts) == set(values) and min(counts.values()) >= 8


@pytest.mark.parametrize("frames", [9, 33])                         # up to the longest clip synth writes
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("height,width", [(32, 32), (32, 64), (56, 40)])
def test_render_clip_moves_visibly_and_stays_inside(direction, height, width, frames):
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        clip = render_clip("yellow", shape, direction, frames, height, width, rng)  # [T, H, W, 3]
        assert clip.shape == (frames, height, width, 3) and clip.dtype == np.uint8
        assert set(map(tuple, clip.reshape(-1, 3))) == {(0, 0, 0), (255, 255, 0)}
        areas = (clip.max(axis=-1) > 0).sum(axis=(1, 2))  # [T]
        # never clipped by the border: the area stays constant up to pixel-grid jitter
        assert areas.min() > 0.8 * areas.max()
        assert 0.3**2 * 0.4 * min(height, width) ** 2 < areas.mean() < 0.45**2 * min(height, width) ** 2 * 1.1
        (y0, x0), (y1, x1) = _centroid(clip[0]), _centroid(clip[-1])
        dy, dx = y1 - y0, x1 - x0
        along, across = {"left": (-dx, dy), "right": (dx, dy), "up": (-dy, dx), "down": (dy, dx)}[direction]
        extent = width if direction in ("left", "right") else height
        assert MIN_TRAVEL * extent - 1 < along < 0.7 * extent + 1, (shape, along)
        assert abs(across) < 0.5


def test_render_image():
    img = render_clip("magenta", "circle", "up", 1, 48, 32, np.random.default_rng(3))
    assert img.shape == (1, 48, 32, 3) and (img.max(axis=-1) > 0).any()


def test_mp4_round_trip_keeps_colours():
    clip = np.zeros((5, 32, 48, 3), np.uint8)  # [T, H, W, 3]
    for i, rgb in enumerate(COLOURS.values()):
        clip[:, :, i * 8:(i + 1) * 8] = rgb  # flat 8-px wide colour bars
    out = decode_video(encode_mp4(clip, 8))
    assert out.shape == clip.shape
    # away from the bar edges (chroma is subsampled 2x2) colours survive within a few levels
    for i in range(len(COLOURS)):
        bar = slice(i * 8 + 2, (i + 1) * 8 - 2)
        assert np.abs(out[:, :, bar].astype(int) - clip[:, :, bar]).max() <= 6
    assert decode_video(encode_mp4(clip, 8), max_frames=2).shape[0] == 2


def test_png_round_trip_and_encode_checks():
    frame = render_clip("green", "square", "left", 1, 32, 32, np.random.default_rng(0))[0]
    np.testing.assert_array_equal(decode_image(encode_png(frame))[0], frame)
    with pytest.raises(ValueError, match="even"):
        encode_mp4(np.zeros((3, 33, 32, 3), np.uint8), 8)
    with pytest.raises(ValueError):
        encode_mp4(np.zeros((3, 32, 32), np.uint8), 8)


@pytest.mark.parametrize("data", [b"", b"not a video at all" * 10, None])
def test_decode_video_rejects_garbage(data):
    if data is None:  # a real mp4 cut short
        data = encode_mp4(np.zeros((5, 32, 32, 3), np.uint8), 8)[:300]
    with pytest.raises(VideoDecodeError):
        decode_video(data)
    with pytest.raises(VideoDecodeError):
        decode_image(data)


def test_decode_refuses_large_frames_before_decoding(monkeypatch):
    mp4 = encode_mp4(np.zeros((3, 64, 64, 3), np.uint8), 8)
    decoded = []
    real_open = av.open

    class Spy:  # wraps the container to notice any frame decoding
        def __init__(self, *a, **k):
            self._c = real_open(*a, **k)
            self.streams = self._c.streams

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._c.close()

        def decode(self, *a, **k):
            decoded.append(True)
            return self._c.decode(*a, **k)

    monkeypatch.setattr(video_io.av, "open", Spy)
    assert decode_video(mp4).shape == (3, 64, 64, 3) and decoded  # the spy sees normal decoding
    decoded.clear()
    with pytest.raises(FrameTooLargeError, match="64x64"):
        decode_video(mp4, max_pixels=64 * 63)
    assert not decoded

    def no_load(self):
        raise AssertionError("image pixels must not be decoded")

    png = encode_png(np.zeros((64, 64, 3), np.uint8))
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_load)
    with pytest.raises(FrameTooLargeError):
        decode_image(png, max_pixels=100)


def test_write_video(tmp_path):
    clip = render_clip("blue", "triangle", "down", 5, 32, 32, np.random.default_rng(0))
    for name in ("a/b.mp4", "c/d.gif"):
        write_video(tmp_path / name, clip, 8)
        assert (tmp_path / name).stat().st_size > 0
    assert decode_video((tmp_path / "a/b.mp4").read_bytes()).shape == clip.shape
    with pytest.raises(ValueError, match=".avi"):
        write_video(tmp_path / "x.avi", clip, 8)


def _members(path):  # {name: bytes} of a tar
    with tarfile.open(path) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf.getmembers()}


def test_synthesize_is_deterministic_and_keeps_heldout_out(tmp_path):
    kw = dict(clips=24, seed=7, shard_size=10, heldout_clips=6)
    m1 = synth.synthesize(tmp_path / "a", **kw)
    m2 = synth.synthesize(tmp_path / "b", **kw)
    assert m1 == m2 == json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert m1["train"] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert m1["heldout"] == ["heldout-000000.tar"] and m1["fps"] == 8 and m1["seed"] == 7
    assert m1["heldout_prompts"] == [caption(*c) for c in HELDOUT_COMBOS]
    assert [48, 64] not in m1["sizes"] and [64, 48] not in m1["sizes"]
    for name in m1["train"] + m1["heldout"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()

    heldout = set(HELDOUT_COMBOS)
    seen_frames = set()
    for split in ("train", "heldout"):
        for name in m1[split]:
            for member, data in _members(tmp_path / "a" / name).items():
                key, ext = member.split(".", 1)
                assert key.startswith(split + "-")
                if ext != "json":
                    continue
                meta = json.loads(data)
                assert (parse_caption(meta["caption"]) in heldout) == (split == "heldout")
                assert [meta["height"], meta["width"]] in m1["sizes"] and meta["fps"] == 8
                seen_frames.add(meta["frames"])
    assert len(seen_frames) >= 3 and seen_frames <= set(synth.FRAMES)
    assert max(synth.FRAMES) == 33          # 17 frames at the demo's 4 fps: the longest clip it samples

    other = synth.synthesize(tmp_path / "c", clips=24, seed=8, shard_size=10, heldout_clips=6)
    assert _members(tmp_path / "c" / other["train"][0]) != _members(tmp_path / "a" / m1["train"][0])


def test_synth_cli(tmp_path, capsys):
    synth.main(["--out", str(tmp_path), "--clips", "3", "--seed", "1", "--heldout-clips", "2"])
    assert "3 train clips" in capsys.readouterr().out
    assert (tmp_path / "train-000000.tar").exists() and (tmp_path / "heldout-000000.tar").exists()
