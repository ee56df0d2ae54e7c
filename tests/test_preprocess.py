"""`sora preprocess` and latent shards: latents equal the VAE's own encoding, an interrupted and
resumed run (and a 2-rank run) writes byte-identical shards, the latent reader skips and counts
every bad-input kind without ever unpickling, and the DiT trains from latent shards with no VAE."""
import dataclasses
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch

from sora.config import load_config, save_config
from sora.data.latent_shards import LatentStream, npy_bytes, read_manifest
from sora.data.pipeline import VideoStream
from sora.data.shards import SkipStats, list_shards
from sora.data.synth import synthesize
from sora.shapes import ShapeRules
from sora.models.text import HashTokenizer
from sora.preprocess import preprocess
from sora.train.artifacts import build_vae, load_vae, save_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Raw shards (3 train of 4 clips, 1 held-out) and a small random stage-1 VAE run."""
    base = tmp_path_factory.mktemp("pre")
    synthesize(base / "raw", clips=12, heldout_clips=4, seed=5, shard_size=4)
    vcfg = load_config(f"{ROOT}/configs/demo-vae.yaml", [f"run.dir={base / 'vae'}", "vae.channels=8"])
    torch.manual_seed(0)
    vae = build_vae(vcfg)
    with torch.no_grad():
        vae.latent_mean.uniform_(-1, 1)
        vae.latent_std.uniform_(0.5, 2)
    save_config(vcfg, base / "vae" / "config.yaml")
    save_weights(vae.state_dict(), base / "vae" / "vae.safetensors")
    cfg = load_config(f"{ROOT}/configs/demo.yaml", [f"data.path={base / 'raw'}", f"vae.run={base / 'vae'}",
                                                     "vae.channels=8", "vae.chunk_frames=4", "data.fps=0"])
    out = base / "lat"
    summary = preprocess(cfg, out, progress=False)
    return base, cfg, out, summary


def _members(path):
    with tarfile.open(path) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf.getmembers()}


def test_latents_match_the_vae(world):
    base, cfg, out, summary = world
    assert summary["written"] == 4 and summary["samples"] == 16 and summary["kept"] == 0
    assert sorted(p.name for p in out.glob("*.tar")) == sorted(os.path.basename(p) for p in
                                                                list_shards(cfg.data.path, "train") + list_shards(cfg.data.path, "heldout"))
    assert read_manifest(out)["latent_channels"] == 4 and not list(out.glob("*.tmp"))
    vae, _ = load_vae(cfg.vae.run)
    tok = HashTokenizer(cfg.text.vocab, cfg.text.max_tokens)
    rules = ShapeRules.of(cfg)
    raw_paths, lat_paths = list_shards(cfg.data.path, "train"), sorted(map(str, out.glob("train-*.tar")))
    raw = {s.key: s for s in VideoStream(raw_paths, cfg.data, rules).samples()}
    got = list(LatentStream(lat_paths, cfg.data, 4, rules).samples())
    assert len(got) == 12
    members = {k: v for p in lat_paths for k, v in _members(p).items()}
    for s in got:
        video = raw[s.key].data
        with torch.no_grad():
            want = vae.encode(video[None])[0].numpy()
        np.testing.assert_allclose(s.data.numpy(), want, rtol=2e-3, atol=2e-3)  # stored as float16
        meta = json.loads(members[f"{s.key}.json"])
        assert s.caption == raw[s.key].caption == meta["caption"] and meta["latent_shape"] == list(s.data.shape)
        assert (meta["frames"], meta["height"], meta["width"]) == tuple(video.shape[1:])
        text = np.load(io.BytesIO(members[f"{s.key}.text.npy"]), allow_pickle=False)
        assert text.tolist() == tok([s.caption])[0].tolist()


def test_raw_and_latent_streams_agree(world):
    """The two streams share everything but decoding: on the same samples (raw shards and their
    latents) they give the same keys in the same order, for any rank split and image mixing."""
    base, cfg, out, _ = world
    rules = ShapeRules.of(cfg)
    raw_paths, lat_paths = list_shards(cfg.data.path, "train"), list_shards(out, "train")
    for ratio in (-1.0, 0.5):
        data = dataclasses.replace(cfg.data, image_ratio=ratio, shuffle_buffer=5)
        for dp in (1, 2, 5):                                  # 3 shards: split by shard, and by sample
            for rank in range(dp):
                raw = [s.key for s in VideoStream(raw_paths, data, rules, rank, dp, seed=3, epochs=2)]
                lat = [s.key for s in LatentStream(lat_paths, data, 4, rules, rank, dp, seed=3, epochs=2)]
                assert raw == lat and raw, (ratio, dp, rank)


def test_interrupted_and_resumed_equals_uninterrupted(world, tmp_path):
    base, cfg, out, _ = world
    names = sorted(p.name for p in out.glob("*.tar"))
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy(out / names[0], resumed / names[0])                          # finished before the interruption
    (resumed / (names[1] + ".tmp")).write_bytes((out / names[1]).read_bytes()[:3000])   # killed mid-write
    summary = preprocess(cfg, resumed, progress=False)
    assert summary["kept"] == 1 and summary["written"] == 3
    assert sorted(p.name for p in resumed.glob("*.tar")) == names and not list(resumed.glob("*.tmp"))
    for n in names:
        assert (resumed / n).read_bytes() == (out / n).read_bytes(), n
    # ranks split the shards r::W and together write the same bytes
    two = tmp_path / "two"
    s0 = preprocess(cfg, two, rank=0, world=2, progress=False)
    s1 = preprocess(cfg, two, rank=1, world=2, progress=False)
    assert (s0["written"], s1["written"]) == (2, 2)
    for n in names:
        assert (two / n).read_bytes() == (out / n).read_bytes(), n
    again = preprocess(cfg, two, progress=False)                              # all done: nothing to encode
    assert again["kept"] == 4 and again["written"] == 0


class _Evil:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _tar(path, members):
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def _sample(key, z, text=np.arange(3, dtype=np.int32), caption="a red circle moving left", shape=None):
    meta = {"caption": caption, "fps": 8, "latent_shape": list(shape if shape is not None else z.shape)}
    return [(f"{key}.latent.npy", npy_bytes(z)), (f"{key}.text.npy", npy_bytes(text)),
            (f"{key}.json", json.dumps(meta).encode())]


def test_bad_latent_samples_skipped_and_counted(tmp_path, monkeypatch):
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Evil(probe)))
    assert probe.exists()                                 # the payloads below would act if ever unpickled
    marker = tmp_path / "unpickled"
    good = np.random.default_rng(0).standard_normal((4, 3, 4, 6)).astype(np.float16)
    nan = good.copy()
    nan[1, 2, 3, 4] = np.nan
    obj = io.BytesIO()
    np.save(obj, np.array([_Evil(marker)], dtype=object), allow_pickle=True)
    members = (_sample("g0", good)
               + _sample("b0", good[:3])                                          # wrong channel count
               + _sample("b1", good, shape=[4, 3, 4, 7])                          # disagrees with its json
               + _sample("b2", nan)                                               # NaN
               + [("b3.latent.npy", obj.getvalue())] + _sample("b3", good)[1:]    # object array (pickle inside)
               + _sample("b4", good) + [("b4.pth", pickle.dumps(_Evil(marker)))]  # pickle member
               + [("b5.latent.npy", npy_bytes(good)), ("b5.text.npy", npy_bytes(np.arange(3))),
                  ("b5.json", b'{"caption": "caf\xe9 \xff", "fps": 8}')]          # non-UTF-8 caption
               + _sample("b6", good, text=np.zeros((2, 3), np.float32))           # text of the wrong kind
               + _sample("b7", good)[:1] + _sample("b7", good)[2:]                # no text.npy
               + _sample("b8", good[0])                                           # 3-D latent
               + [("b9.latent.npy", b"\x93NUMPY garbage"), ("b9.text.npy", npy_bytes(np.arange(3))),
                  ("b9.json", json.dumps({"caption": "x", "fps": 8, "latent_shape": [4, 3, 4, 6]}).encode())]
               + _sample("g1", good.astype(np.float32)))
    _tar(tmp_path / "train-000000.tar", members)

    def no_unpickling(*a, **k):
        raise AssertionError("something tried to unpickle shard data")
    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, no_unpickling)
    stats = SkipStats()
    cfg = load_config(f"{ROOT}/configs/demo.yaml")
    path = str(tmp_path / "train-000000.tar")
    got = list(LatentStream([path], cfg.data, 4, ShapeRules.of(cfg), stats=stats).samples())
    assert [s.key for s in got] == ["g0", "g1"]
    assert not marker.exists()
    assert stats.as_dict() == {"bad_latent_shape": 3, "nonfinite_latent": 1, "bad_npy": 2, "pickle_payload": 1,
                               "non_utf8": 1, "bad_text_shape": 1, "missing_latent": 1}


def test_latent_stream_bounds_and_image_ratio(tmp_path):
    rng = np.random.default_rng(0)
    members = []
    for i in range(12):                                   # 6 images (1 latent frame), 6 clips of 5 latent frames
        t = 1 if i % 2 else 5
        members += _sample(f"s{i:02d}", rng.standard_normal((4, t, 4, 6)).astype(np.float16))
    members += _sample("tiny", rng.standard_normal((4, 1, 2, 2)).astype(np.float16))   # 1 token: below the minimum
    _tar(tmp_path / "train-000000.tar", members)
    cfg = load_config(f"{ROOT}/configs/demo.yaml", ["data.max_frames=5", "data.max_tokens_per_sample=12",
                                                    "data.min_tokens_per_sample=2", "data.shuffle_buffer=4",
                                                    "data.image_ratio=0.0"])
    stats = SkipStats()
    stream = LatentStream([str(tmp_path / "train-000000.tar")], cfg.data, 4, ShapeRules(2, 4, (1, 2, 2)), stats=stats,
                          epochs=1)
    items = list(stream)
    assert len(items) == 12 and stats.as_dict() == {"too_few_tokens": 1}
    # max_frames 5 -> at most 3 latent frames; 12 tokens / 6 per frame -> 2: a causal prefix of the clip
    assert {tuple(s.data.shape[1:]) for s in items} == {(1, 4, 6), (2, 4, 6)}
    kinds = [s.data.shape[1] == 1 for s in items]
    assert kinds == sorted(kinds)                         # image_ratio 0: every clip comes before any image


@pytest.mark.slow
def test_cli_preprocess_two_ranks_then_train_without_vae(world, tmp_path):
    base, cfg, _, _ = world
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    common = [f"{ROOT}/configs/demo.yaml", f"data.path={base / 'raw'}", f"vae.run={base / 'vae'}", "vae.channels=8"]
    r = subprocess.run([sys.executable, "-m", "launcher.cli", "local", "--nproc", "2", "preprocess", *common,
                        "--out", str(tmp_path / "lat")], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "clips/s" in r.stdout and len(list((tmp_path / "lat").glob("*.tar"))) == 4
    r = subprocess.run([sys.executable, "-m", "sora.cli", "train", f"{ROOT}/configs/demo.yaml",
                        f"data.path={tmp_path / 'lat'}", f"vae.run={tmp_path / 'no-vae-here'}", "vae.channels=8",
                        f"run.dir={tmp_path / 'dit'}", "train.steps=2", "run.log_every=1", "model.depth=2",
                        "model.width=48", "model.heads=4", "data.tokens_per_batch=600"],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "dit" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 1] and all(np.isfinite(row["loss"]) for row in rows)
