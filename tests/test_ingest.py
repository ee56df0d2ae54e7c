"""`sora ingest` on a corpus of real-codec files built here with FFmpeg's encoders (tests/ingest_corpus.py):
h264 with B-frames + audio, hevc, vp9, av1, mpeg4, prores, mjpeg in mp4/mkv/webm/mov/avi; 23.976 /
29.97 / 60 fps; variable frame rate; a rotation tag; odd sizes; hard cuts; png/webp/jpg (EXIF); a gif;
and every kind of bad input. Output is read back with the training reader (sora.data.shards)."""
import json
import os
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from sora.data.ingest import run as ingest_run
from sora.data.ingest.clips import plan_windows, split_shot
from sora.data.ingest.options import IngestError, IngestOptions
from sora.data.ingest.run import ingest
from sora.data.shards import SkipStats, iter_shard_samples, list_shards
from tests import ingest_corpus as corpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENCODERS = ("libx264", "libx265", "libvpx-vp9", "libsvtav1", "mpeg4", "prores_ks", "mjpeg", "gif", "aac")


def _missing_encoders():
    import av
    missing = []
    for name in ENCODERS:
        try:
            av.codec.Codec(name, "w")
        except Exception:
            missing.append(name)
    return missing


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    missing = _missing_encoders()
    if missing:   # the corpus cannot be made: say so, loudly, instead of testing less
        pytest.fail(f"this FFmpeg (PyAV {__import__('av').__version__}) lacks encoders {missing}; "
                    "the ingest corpus needs all of them")
    root = tmp_path_factory.mktemp("corpus")
    return corpus.build(str(root))


@pytest.fixture(scope="module")
def ingested(built, tmp_path_factory):
    out = tmp_path_factory.mktemp("ingested") / "data"
    summary = ingest([built["videos"]], out, opts=IngestOptions(samples_per_shard=5), progress=False)
    return out, summary


def samples(out, split="train", max_frames=1000):
    """[(meta json, Sample)] read back with the training reader (nothing may be skipped)."""
    stats = SkipStats()
    paths = list_shards(out, split)
    metas = {}
    for p in paths:
        with tarfile.open(p) as tf:
            for m in tf.getmembers():
                if m.name.endswith(".json"):
                    metas[m.name[:-len(".json")]] = json.loads(tf.extractfile(m).read())
    got = [(metas[s.key], s) for s in iter_shard_samples(paths, stats, max_frames=max_frames)]
    assert stats.as_dict() == {}, stats.as_dict()
    return got


def by_source(got, videos):
    out = {}
    for meta, s in got:
        out.setdefault(os.path.relpath(meta["source"], videos), []).append((meta, s))
    return out


def test_every_good_file_gives_an_upright_sample_at_its_rate_with_its_caption(built, ingested):
    out, summary = ingested
    got = by_source(samples(out), built["videos"])
    assert sorted(got) == sorted(built["good"])
    for name, want in built["good"].items():
        assert len(got[name]) == 1, (name, len(got[name]))     # each lasts less than the 10 s clip maximum
        meta, s = got[name][0]
        assert s.caption == want["caption"] and meta["caption"] == want["caption"]
        assert s.frames.shape[1:3] == want["size"], (name, s.frames.shape)
        assert corpus.red_corner(s.frames[0]) == want["corner"], name        # stored upright
        assert meta["fps"] == pytest.approx(want["fps"], rel=1e-6), name
        assert meta["frames"] == s.frames.shape[0] == want["frames"], (name, s.frames.shape[0])
        if want["frames"] > 1:   # frames = duration x fps
            assert meta["end"] - meta["start"] == pytest.approx(want["frames"] / want["fps"], abs=1e-3)
            assert meta["motion"] > 0.5, name
        assert (meta["height"], meta["width"]) == want["size"] and meta["shot"] == 0
    # the report: every file seen, every bad one skipped with its reason, nothing else skipped
    report = json.loads((out / "ingest_report.json").read_text())
    assert report == summary["report"]
    want_skips = {}
    for reason in built["bad"].values():
        want_skips[reason] = want_skips.get(reason, 0) + 1
    assert report["skipped"] == want_skips
    assert report["partial"] == {}
    assert report["files"] == len(built["good"]) + len(built["bad"])
    assert report["clips"] == len(built["good"])
    assert report["frames"] == sum(w["frames"] for w in built["good"].values())
    assert sorted(p for p, _, _ in report["examples"]) == sorted(
        os.path.join(built["videos"], "bad", n) for n in built["bad"])
    assert {os.path.basename(p): r for p, r, _ in report["examples"]} == built["bad"]
    assert sorted(report["shards"]) == sorted(p.name for p in out.glob("train-*.tar"))
    assert not list(out.glob("*.tmp"))


def test_variable_frame_rate_is_resampled_by_timestamps(built, ingested):
    """Each output frame shows the source frame nearest in time (the square's x tells which one)."""
    out, _ = ingested
    meta, s = by_source(samples(out), built["videos"])["vfr.mkv"][0]
    pts = np.array(built["good"]["vfr.mkv"]["vfr_pts"]) / 1000.0
    h, w = s.frames.shape[1:3]
    bw, size = max(2, w // 4), max(2, min(h, w) // 5)
    for k, frame in enumerate(s.frames):
        t = k / meta["fps"]
        want = int(np.argmin(np.abs(pts - t) + 1e-9 * np.arange(len(pts))))   # nearest, ties to the earlier
        row = frame[h // 2 + size // 2].astype(int).sum(axis=1)               # a row through the square
        x = int(np.argmax(row > 600))
        assert abs(x - ((bw + 2 + 2 * want) % (w - size))) <= 1, (k, x, want)


def test_shots_give_one_clip_each(built, tmp_path):
    cuts = os.path.join(built["videos"], "cuts.mp4")
    flat = os.path.join(built["videos"], "h264_bframes_audio.mp4")
    ingest([cuts, flat], tmp_path / "a", opts=IngestOptions(scenes=True), progress=False)
    got = by_source(samples(tmp_path / "a"), built["videos"])
    shots = got["cuts.mp4"]
    assert [m["shot"] for m, _ in shots] == [0, 1, 2, 3]
    assert [m["frames"] for m, _ in shots] == [24, 24, 24, 24]
    assert [m["start"] for m, _ in shots] == [0.0, 1.0, 2.0, 3.0]
    for k, (_, s) in enumerate(shots):    # every frame of clip k is in shot k's colour (bottom-right pixel)
        assert np.abs(s.frames[:, -1, -1].astype(int) - corpus.SHOT_COLOURS[k]).max() < 12
    assert len(got["h264_bframes_audio.mp4"]) == 1              # no cut: one shot
    # longer shots are cut into windows of at most the maximum; shorter than the minimum are dropped
    ingest([cuts], tmp_path / "b", opts=IngestOptions(scenes=True, clip_min=0.3, clip_max=0.5), progress=False)
    got = by_source(samples(tmp_path / "b"), built["videos"])["cuts.mp4"]
    assert [(m["shot"], m["frames"]) for m, _ in got] == [(k, 12) for k in range(4) for _ in range(2)]
    r = ingest([cuts], tmp_path / "c", opts=IngestOptions(scenes=True, clip_min=1.5), progress=False)["report"]
    assert r["clips"] == 0 and r["skipped"] == {"too_short": 4}


def test_split_shot_windows():
    assert split_shot(0, 10, 1, 4) == ([(0, 3), (3, 6), (6, 10)], 0)     # equal windows, no leftover
    assert split_shot(0, 10, 4, 4) == ([(0, 4), (4, 8)], 2)              # equal ones would be too short
    assert split_shot(5, 8, 4, 10) == ([], 3)
    assert plan_windows([4], 10, 2, 3) == ([(0, 0, 2), (0, 2, 4), (1, 4, 7), (1, 7, 10)], [])


def _write_parquet(path, rows):
    import pyarrow as pa          # the 'test' extra installs it: missing means a broken install, not a skip
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist(rows), path)


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet"])
def test_manifest_captions_and_clip_ranges(built, tmp_path, kind):
    rel = os.path.relpath(built["videos"], tmp_path)          # paths relative to the manifest
    rows = [{"path": f"{rel}/cuts.mp4", "text": "the second shot", "start": 1.0, "end": 2.0},
            {"path": f"{rel}/cuts.mp4", "text": "the last shots", "start": 2.5, "end": 4.0},
            {"path": f"{rel}/vp9.webm", "text": "a whole vp9 clip", "start": None, "end": None},
            {"path": f"{rel}/not_there.mp4", "text": "missing", "start": None, "end": None}]
    manifest = tmp_path / f"m.{kind}"
    if kind == "csv":
        lines = ["path,text,start,end"] + [f"{r['path']},{r['text']},{r['start'] or ''},{r['end'] or ''}" for r in rows]
        manifest.write_text("\n".join(lines) + "\n")
    elif kind == "jsonl":
        manifest.write_text("".join(json.dumps({"video": r["path"], "caption": r["text"], "start": r["start"],
                                                "end": r["end"]}) + "\n" for r in rows))
    else:
        _write_parquet(manifest, [{"file": r["path"], "caption": r["text"], "start": r["start"], "end": r["end"]}
                                  for r in rows])
    summary = ingest([], tmp_path / "out", captions=str(manifest), progress=False)
    got = [(m["caption"], m["start"], m["end"], m["frames"]) for m, _ in samples(tmp_path / "out")]
    assert got == [("the second shot", 1.0, 2.0, 24), ("the last shots", 2.5, 4.0, 36),
                   ("a whole vp9 clip", 0.0, 1.0, 30)]
    assert summary["report"]["skipped"] == {"not_found": 1} and summary["report"]["files"] == 4


def test_manifest_rows_beside_directory_sources_and_bad_manifests(built, tmp_path):
    """A directory SRC with a manifest: named files take the manifest's caption, the rest their sidecars."""
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(b"file,caption\n" + f"{built['videos']}/vp9.webm,from the manifest\n".encode()
                         + f"{built['videos']}/av1.mkv,caf\xe9\n".encode("latin-1"))
    r = ingest([built["videos"]], tmp_path / "out", captions=str(manifest), progress=False)["report"]
    got = by_source(samples(tmp_path / "out"), built["videos"])
    assert got["vp9.webm"][0][0]["caption"] == "from the manifest"
    assert "av1.mkv" not in got and r["skipped"]["non_utf8"] == 2       # its row, and the latin-1 sidecar
    assert got["hevc.mkv"][0][0]["caption"] == corpus.caption_for("hevc.mkv")
    (tmp_path / "bad.csv").write_text("name,words\nx.mp4,hello\n")
    with pytest.raises(IngestError, match="path column"):
        ingest([], tmp_path / "o2", captions=str(tmp_path / "bad.csv"), progress=False)
    with pytest.raises(IngestError, match="no such file"):
        ingest([], tmp_path / "o2", captions=str(tmp_path / "none.csv"), progress=False)


def test_listing_counts_loops_dangling_links_duplicates_and_unreadable(built, tmp_path, monkeypatch):
    d = tmp_path / "src"
    (d / "sub").mkdir(parents=True)
    (d / "locked").mkdir()
    for name in ("vp9.webm", "vp9.txt"):
        shutil.copy(os.path.join(built["videos"], name), d / "sub" / name)
    os.symlink(d, d / "sub" / "loop")                                   # a directory that contains itself
    os.symlink(d / "sub" / "vp9.webm", d / "sub" / "z_again.webm")      # the same file twice
    os.symlink(tmp_path / "gone.mp4", d / "dangling.mp4")
    real_scandir = os.scandir

    def scandir(path):
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)
    monkeypatch.setattr(os, "scandir", scandir)
    r = ingest([str(d)], tmp_path / "out", progress=False)["report"]
    assert r["clips"] == 1
    assert r["skipped"] == {"duplicate": 1, "not_found": 1, "symlink_loop": 1, "unreadable": 1}, r["skipped"]


def test_filters_sizes_and_rates(built, tmp_path):
    v = built["videos"]
    srcs = [f"{v}/mjpeg_60fps.avi", f"{v}/h264_bframes_audio.mp4", f"{v}/still.png", f"{v}/phone/portrait.mp4"]
    ingest(srcs, tmp_path / "a", opts=IngestOptions(fps_max=30, max_side=24), progress=False)
    got = by_source(samples(tmp_path / "a"), v)
    m, s = got["mjpeg_60fps.avi"][0]
    assert m["fps"] == 30.0 and m["frames"] == 30 and s.frames.shape[1:3] == (24, 32)    # 38x50 -> 24x31.6 -> even
    m, s = got["phone/portrait.mp4"][0]
    assert s.frames.shape[1:3] == (32, 24) and corpus.red_corner(s.frames[0]) == "tl"
    assert got["still.png"][0][1].frames.shape[1:3] == (24, 32)
    assert got["h264_bframes_audio.mp4"][0][0]["fps"] == pytest.approx(24000 / 1001)      # under the cap: kept
    r = ingest(srcs, tmp_path / "b", opts=IngestOptions(min_motion=50.0, max_aspect=1.4, min_seconds=1.5),
               progress=False)["report"]
    # 60 fps mjpeg: 1 s, too short; h264 2 s, moves too little; the png is an image (no motion filter);
    # the portrait clip 48x64 is within the aspect limit but too short
    assert r["skipped"] == {"static": 1, "too_short": 2} and r["clips"] == 1
    r = ingest([f"{v}/h264_bframes_audio.mp4"], tmp_path / "c", opts=IngestOptions(max_aspect=1.2, max_seconds=3),
               progress=False)["report"]
    assert r["skipped"] == {"too_wide": 1}


def test_pixel_guard_refuses_before_decoding(built, tmp_path, monkeypatch):
    """Header-sized (mp4) and decoder-refused (mjpeg in avi: no size in the header) frames over max_pixels."""
    import av
    decoded = []
    real = av.VideoFrame.to_ndarray
    monkeypatch.setattr(av.VideoFrame, "to_ndarray", lambda self, *a, **k: decoded.append(1) or real(self, *a, **k))
    v = built["videos"]
    r = ingest([f"{v}/h264_bframes_audio.mp4", f"{v}/mjpeg_60fps.avi", f"{v}/bad/bomb.png"], tmp_path / "a",
               opts=IngestOptions(max_pixels=1000), progress=False)["report"]
    assert r["skipped"] == {"too_large": 3} and not decoded


def test_corrupted_middle_keeps_whole_clips_and_counts_the_rest(tmp_path):
    path = str(tmp_path / "damaged.mp4")
    corpus.encode(path, corpus.clip(96), 24, "libx264", "mp4", "yuv420p")
    corpus.corrupt_middle(path, seed=0)
    corpus.side(path, "damaged")
    r = ingest([path], tmp_path / "out", opts=IngestOptions(clip_max=0.5), progress=False)["report"]
    kept = samples(tmp_path / "out")
    assert 0 < r["clips"] == len(kept) < 8
    assert r["skipped"].get("decode_error", 0) + sum(r["partial"].values()) >= 1
    for m, s in kept:   # a kept clip is whole: all its frames, intact (the square where it belongs)
        assert s.frames.shape[0] == m["frames"] == 12


def _shard_bytes(out):
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.tar"))}


def test_interrupted_and_resumed_equals_uninterrupted(built, tmp_path, monkeypatch):
    opts = IngestOptions(samples_per_shard=3)
    ingest([built["videos"]], tmp_path / "whole", opts=opts, progress=False)
    want = _shard_bytes(tmp_path / "whole")
    assert len(want) >= 4
    real, calls = ingest_run.ingest_item, []

    def dies_at_the_tenth(*a, **k):
        calls.append(1)
        if len(calls) == 10:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(ingest_run, "ingest_item", dies_at_the_tenth)
    with pytest.raises(KeyboardInterrupt):
        ingest([built["videos"]], tmp_path / "resumed", opts=opts, progress=False)
    monkeypatch.setattr(ingest_run, "ingest_item", real)
    part = _shard_bytes(tmp_path / "resumed")
    assert 0 < len(part) < len(want) and all(want[n] == b for n, b in part.items())   # only whole shards
    assert not (tmp_path / "resumed" / "ingest_report.json").exists()
    (tmp_path / "resumed" / f"{sorted(want)[-1]}.tmp").write_bytes(b"left by a killed run")
    summary = ingest([built["videos"]], tmp_path / "resumed", opts=opts, progress=False)
    assert summary["done_before"] >= 1
    assert _shard_bytes(tmp_path / "resumed") == want
    a = json.loads((tmp_path / "whole" / "ingest_report.json").read_text())
    b = json.loads((tmp_path / "resumed" / "ingest_report.json").read_text())
    for key in ("files", "clips", "frames", "seconds", "skipped", "partial", "shards"):
        assert a[key] == b[key], key
    # a finished run re-run does nothing; other options into the same directory are refused
    again = ingest([built["videos"]], tmp_path / "resumed", opts=opts, progress=False)
    assert again["written"] == 0 and _shard_bytes(tmp_path / "resumed") == want
    with pytest.raises(IngestError, match="samples_per_shard"):
        ingest([built["videos"]], tmp_path / "resumed", opts=IngestOptions(samples_per_shard=4), progress=False)
    # two ranks, one after the other, write the same shards as one
    for rank in (1, 0):
        s = ingest([built["videos"]], tmp_path / "ranks", opts=opts, rank=rank, world=2, progress=False)
        assert (s["report"] is None) == (rank == 1)      # the report comes from the last rank to finish
    assert _shard_bytes(tmp_path / "ranks") == want


def _cli(*args, module="sora.cli", cwd=None):
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", module, *args], env=env, capture_output=True, text=True,
                          timeout=600, cwd=cwd)


def test_cli_refuses_bad_options_naming_them(tmp_path):
    for args, words in ((["--clip-seconds", "5"], "--clip-seconds"), (["--clip-seconds", "5:2"], "--clip-seconds"),
                        (["--split", "a-b"], "--split"), (["--workers", "0"], "--workers"), ([], "SRC")):
        r = _cli("ingest", *(["x"] if args else []), "--out", str(tmp_path / "o"), *args)
        assert r.returncode == 2 and words in r.stderr, (args, r.stderr)


@pytest.mark.slow
def test_workers_and_ranks_write_the_same_shards_as_one_process(built, tmp_path):
    common = ["--samples-per-shard", "3", "--no-progress"]
    r = _cli("ingest", built["videos"], "--out", str(tmp_path / "one"), *common)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "clips written" in r.stdout and "skipped" in r.stdout
    r = _cli("ingest", built["videos"], "--out", str(tmp_path / "two"), "--workers", "2", *common)
    assert r.returncode == 0, r.stderr[-3000:]
    r = _cli("local", "--nproc", "2", "ingest", built["videos"], "--out", str(tmp_path / "launch"), *common,
             module="launcher.cli")
    assert r.returncode == 0, r.stderr[-3000:]
    one = _shard_bytes(tmp_path / "one")
    assert _shard_bytes(tmp_path / "two") == one and _shard_bytes(tmp_path / "launch") == one
    reports = [json.loads((tmp_path / d / "ingest_report.json").read_text()) for d in ("one", "two", "launch")]
    assert all(r["skipped"] == reports[0]["skipped"] and r["clips"] == reports[0]["clips"] for r in reports)


def _peak_rss_mb(args):
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so the child would report pytest's peak
    code = ("from sora.data.ingest.run import ingest; from sora.data.ingest.options import IngestOptions; "
            f"ingest([{args[0]!r}], {args[1]!r}, opts=IngestOptions(), progress=False); "
            "print([int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')][0] / 1024)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 0, r.stderr[-2000:]
    return float(r.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_memory_does_not_grow_with_video_length(tmp_path):
    """A 40 s 320x240 video (220 MB of raw frames) needs no more memory than a 2 s one."""
    for name, seconds in (("short", 2), ("long", 40)):
        frames = (corpus.picture(t, 240, 320, corpus.SHOT_COLOURS[(t // 48) % 4]) for t in range(24 * seconds))
        corpus.encode(str(tmp_path / f"{name}.mp4"), frames, 24, "libx264", "mp4", "yuv420p",
                      options={"preset": "ultrafast"})
        corpus.side(str(tmp_path / f"{name}.mp4"), name)
    short = _peak_rss_mb((str(tmp_path / "short.mp4"), str(tmp_path / "o1")))
    long = _peak_rss_mb((str(tmp_path / "long.mp4"), str(tmp_path / "o2")))
    assert 30 < short and long - short < 60, (short, long)


@pytest.mark.slow
def test_training_and_preprocess_read_ingested_shards(ingested, tmp_path):
    """`sora train configs/demo.yaml data.path=DIR` and `sora preprocess` on the ingest output
    (with a small random stage-1 VAE)."""
    import torch

    from sora.config import load_config, save_config
    from sora.preprocess import preprocess
    from sora.train.artifacts import build_vae, save_weights
    out, summary = ingested
    vcfg = load_config(f"{ROOT}/configs/demo-vae.yaml", [f"run.dir={tmp_path / 'vae'}", "vae.channels=8"])
    torch.manual_seed(0)
    save_config(vcfg, tmp_path / "vae" / "config.yaml")
    save_weights(build_vae(vcfg).state_dict(), tmp_path / "vae" / "vae.safetensors")
    cfg = load_config(f"{ROOT}/configs/demo.yaml", [f"data.path={out}", f"vae.run={tmp_path / 'vae'}",
                                                     "vae.channels=8", "vae.chunk_frames=4"])
    pre = preprocess(cfg, tmp_path / "lat", splits=("train",), progress=False)
    assert pre["samples"] == summary["report"]["clips"] and pre["skipped"] == {}
    assert len(list((tmp_path / "lat").glob("train-*.tar"))) == len(summary["report"]["shards"])
    r = _cli("train", f"{ROOT}/configs/demo.yaml", f"data.path={out}", f"vae.run={tmp_path / 'vae'}",
             "vae.channels=8", f"run.dir={tmp_path / 'dit'}", "train.steps=2", "run.log_every=1", "model.depth=2",
             "model.width=48", "model.heads=4", "data.tokens_per_batch=600", "data.shuffle_buffer=4", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "dit" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 1] and all(np.isfinite(row["loss"]) for row in rows)
    assert not any(k.startswith("skipped_") for row in rows for k in row), rows[-1]


def test_a_second_split_into_the_same_directory(built, tmp_path):
    v = built["videos"]
    ingest([f"{v}/vp9.webm", f"{v}/still.png"], tmp_path / "d", progress=False)
    r = ingest([f"{v}/hevc.mkv", f"{v}/bad/empty.mp4"], tmp_path / "d", opts=IngestOptions(split="heldout"),
               progress=False)["report"]
    assert sorted(r["splits"]) == ["heldout", "train"]
    assert (r["splits"]["train"]["clips"], r["splits"]["heldout"]["clips"], r["clips"]) == (2, 1, 3)
    assert r["skipped"] == {"empty_file": 1} and r["files"] == 4
    assert [m["caption"] for m, _ in samples(tmp_path / "d", "heldout")] == [corpus.caption_for("hevc.mkv")]


def test_sidecar_captions(tmp_path):
    from sora.data.ingest.sources import sidecar_caption
    cases = {"a.txt": b"  a caption \n", "b.json": b'{"caption": "from json"}', "c.json": b'{"text": "from text"}',
             "d.mp4.txt": b"beside the full name", "e.txt": b"caf\xe9", "f.json": b"{not json", "g.json": b'{"x": 1}',
             "h.txt": b"   \n", "i.txt": "\u00e9t\u00e9 \u2600".encode()}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    got = {n: sidecar_caption(str(tmp_path / f"{n}.mp4")) for n in "abcdefghij"}
    assert got["a"] == ("a caption", None) and got["b"] == ("from json", None) and got["c"] == ("from text", None)
    assert got["d"] == ("beside the full name", None) and got["i"] == ("\u00e9t\u00e9 \u2600", None)
    assert [got[n][1][0] for n in "efghj"] == ["non_utf8", "bad_caption", "bad_caption", "missing_caption",
                                               "missing_caption"]
