"""Robust shard reading through the raw sample stream: every kind of bad sample/shard is skipped and
counted; good samples survive."""
import io
import json
import logging
import pickle
import tarfile

import numpy as np
import pytest

from sora.config import load_config
from sora.data.pipeline import VideoStream
from sora.data.shards import SkipStats, list_shards
from sora.data.video_io import encode_mp4, encode_png
from sora.data.world import caption, render_clip
from sora.shapes import ShapeRules

ROOT = __file__.rsplit("/tests/", 1)[0]


def read_all(paths, stats, **kw):
    """Every sample of `paths` in shard order, as the raw stream decodes them (full size, every frame)."""
    cfg = load_config(f"{ROOT}/configs/demo.yaml", ["data.fps=0", "data.max_frames=33", "data.max_tokens_per_sample=4096",
                                                   "data.tokens_per_batch=4096"])
    return list(VideoStream(paths, cfg.data, ShapeRules.of(cfg), stats=stats, **kw).samples(paths))


def _clip(colour, frames=5, seed=0):  # [T, 32, 32, 3]
    return render_clip(colour, "square", "right", frames, 32, 32, np.random.default_rng(seed))


def _meta(text, **extra):
    return json.dumps({"caption": text, "fps": 8, **extra}).encode()


def _good(key, colour="red", seed=0):
    return [(f"{key}.json", _meta(caption(colour, "square", "right"))),
            (f"{key}.mp4", encode_mp4(_clip(colour, seed=seed), 8))]


def _write_tar(path, members):
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return str(path)


class _Evil:
    """Unpickling this creates a file: proof that a payload was (or was not) loaded."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_bad_samples_are_skipped_and_counted(tmp_path, monkeypatch, caplog):
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Evil(probe)))
    assert probe.exists()  # the payload below really would act if loaded
    marker = tmp_path / "unpickled"
    members = (
        _good("s00", "red")
        + [("s01.json", _meta(caption("blue", "circle", "up"))),
           ("s01.mp4", b"\x00\x00\x00\x18ftypisom" + b"junk" * 50)]
        + [("s02.json", json.dumps({"fps": 8}).encode()), ("s02.mp4", encode_mp4(_clip("green"), 8))]
        + [("s03.json", _meta("   ")), ("s03.mp4", encode_mp4(_clip("green"), 8))]
        + [("s04.json", _meta("a pickle")), ("s04.pyd", pickle.dumps(_Evil(marker))),
           ("s04.mp4", encode_mp4(_clip("green"), 8))]
        + [("s05.json", b"\xff\xfe not utf-8"), ("s05.mp4", encode_mp4(_clip("green"), 8))]
        + [("s06.json", _meta("no media")), ("s06.txt", b"hello")]
        + [("s07.mp4", encode_mp4(_clip("green"), 8))]  # no json
        + [("s08.json", _meta("an image", fps=4)), ("s08.png", encode_png(_clip("white", frames=1)[0]))]
        + [("s09.json", _meta("bad png")), ("s09.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)]
        + [("s10.json", _meta("huge")), ("s10.mp4", encode_mp4(np.zeros((2, 64, 64, 3), np.uint8), 8))]
        + [("s11.json", b"[1, 2]"), ("s11.mp4", encode_mp4(_clip("green"), 8))]
        + _good("s12", "yellow")
        + [("s13.json", b'{"caption": "lone surrogate \\udcff", "fps": 8}'), ("s13.mp4", encode_mp4(_clip("green"), 8))]
    )
    shard = _write_tar(tmp_path / "train-000000.tar", members)

    def no_unpickling(*a, **k):
        raise AssertionError("something tried to unpickle shard data")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, no_unpickling)
    stats = SkipStats()
    with caplog.at_level(logging.WARNING, logger="sora.data"):
        samples = read_all([shard], stats, max_pixels=48 * 48)

    assert [s.key for s in samples] == ["s00", "s08", "s12"]
    assert samples[0].data.shape == (3, 5, 32, 32) and -1 <= samples[0].data.min() < samples[0].data.max() <= 1
    assert samples[0].caption == "a red square moving right" and samples[0].fps == 8.0
    assert samples[1].data.shape == (3, 1, 32, 32) and samples[1].fps == 4.0
    assert stats.as_dict() == {
        "corrupt_video": 1, "missing_caption": 1, "empty_caption": 1, "pickle_payload": 1, "bad_json": 1, "non_utf8": 2,
        "missing_media": 1, "missing_json": 1, "corrupt_image": 1, "frame_too_large": 1,
    }
    assert sum(stats.as_dict().values()) == 11
    assert not marker.exists()
    # one warning per reason, not per sample (non_utf8 happened twice: bytes, and a lone surrogate escape)
    assert sum("non_utf8" in r.getMessage() for r in caplog.records) == 1


def test_truncated_and_unreadable_shards_do_not_stop_reading(tmp_path):
    full = _write_tar(tmp_path / "a.tar", _good("a0") + _good("a1", seed=1) + _good("a2", seed=2))
    data = open(full, "rb").read()
    with tarfile.open(full) as tf:
        offsets = {m.name: (m.offset, m.offset_data) for m in tf.getmembers()}

    cut_mid = tmp_path / "train-000001.tar"  # cut inside a2's mp4 data
    cut_mid.write_bytes(data[: offsets["a2.mp4"][1] + 100])
    cut_edge = tmp_path / "train-000002.tar"  # cut exactly before a2's first header: looks clean to tarfile
    cut_edge.write_bytes(data[: offsets["a2.json"][0]])
    garbage = tmp_path / "train-000003.tar"
    garbage.write_bytes(b"definitely not a tar file" * 100)
    last = _write_tar(tmp_path / "train-000004.tar", _good("b0", "blue"))
    paths = [str(cut_mid), str(tmp_path / "missing.tar"), str(cut_edge), str(garbage), last]

    stats = SkipStats()
    keys = [s.key for s in read_all(paths, stats)]
    # the sample being read at a cut is dropped (at a clean member boundary that is a1: it may have
    # lost members), samples before it are kept, later shards are still read
    assert keys == ["a0", "a1", "a0", "b0"]
    assert stats.as_dict() == {"truncated_shard": 2, "unreadable_shard": 2}


def test_list_shards(tmp_path):
    for name in ("train-000001.tar", "train-000000.tar", "heldout-000000.tar", "train-notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert list_shards(tmp_path, "train") == [str(tmp_path / "train-000000.tar"), str(tmp_path / "train-000001.tar")]
    with pytest.raises(FileNotFoundError, match="val"):
        list_shards(tmp_path, "val")


def test_synthesized_shards_read_back(tmp_path):
    from sora.data import synth

    synth.synthesize(tmp_path, clips=6, seed=1, shard_size=4, heldout_clips=2)
    stats = SkipStats()
    samples = read_all(list_shards(tmp_path, "train"), stats)
    assert len(samples) == 6 and not stats.as_dict()
    for s in samples:
        assert s.data.shape[1] in synth.FRAMES and s.fps == synth.FPS
