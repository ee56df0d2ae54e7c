"""Cached text features: `sora preprocess` with a frozen encoder (a tiny random umT5 written here)
stores each caption's real encoder rows and the empty caption's; the latent stream, the packer
(caption dropout included) and sequence parallelism's per-segment selection carry them; the model
is built without an encoder and equals the one that encodes online; `text.context_rows` pads with
zero rows; every mismatch between the config and the shards is refused by name; and `sora train`
on cached features (no encoder weights anywhere in reach) logs the losses of an online run."""
import io
import json
import os
import shutil
import tarfile

import numpy as np
import pytest
import torch

from sora.config import ConfigError, load_config
from sora.data.latent_shards import (EMPTY_TEXT, cached_text, features_from_npy, features_to_npy, latent_stream,
                                     read_manifest)
from sora.data.loader import PackedLoader
from sora.data.packing import PackedBatch, PackedText
from sora.data.shards import SkipStats, list_shards
from sora.data.synth import synthesize
from sora.models.pretrained import PretrainedTextEncoder
from sora.models.text import pad_context
from sora.models.t2v import TextToVideo
from sora.parallel.dims import ParallelDims
from sora.preprocess import preprocess, preprocess_shard
from sora.train.trainer import step_input
from tests.cli_runs import TINY, metrics, random_vae_run, sora
from tests.tiny_wan import TEXT_DIM, umt5

tf = pytest.importorskip("transformers", reason="frozen text encoders need transformers")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIM = TEXT_DIM


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Raw shards (2 of 4 clips), a random stage-1 VAE run, a tiny umT5, and float16 latent shards."""
    base = tmp_path_factory.mktemp("textcache")
    synthesize(base / "raw", clips=8, heldout_clips=0, seed=3, shard_size=4)
    torch.manual_seed(0)
    random_vae_run(base / "vae")
    tok, ref = umt5(base / "umt5")
    cfg = load_config(f"{ROOT}/configs/demo.yaml", [f"data.path={base / 'raw'}", f"vae.run={base / 'vae'}",
                                                     "vae.channels=8", "data.fps=0", "text.encoder=t5",
                                                     f"text.path={base / 'umt5'}", "text.max_tokens=8"])
    preprocess(cfg, base / "lat16", progress=False)
    return base, cfg, tok, ref


def _on(cfg, path, *overrides):
    """cfg with data.path=path, then overrides (validated as from the command line)."""
    from sora.config import config_from_dict, to_dict

    return config_from_dict(to_dict(cfg), [f"data.path={path}", *overrides])


def _stored(out):
    """key -> (caption, stored text array) of every sample in the latent shards under `out`."""
    got = {}
    for path in list_shards(out, "train"):
        with tarfile.open(path) as t:
            members = {m.name: t.extractfile(m).read() for m in t.getmembers()}
        for name, data in members.items():
            if name.endswith(".json"):
                key = name[:-len(".json")]
                got[key] = (json.loads(data)["caption"],
                            np.load(io.BytesIO(members[f"{key}.text.npy"]), allow_pickle=False))
    return got


def _direct(tok, ref, caption):
    """The library's own forward on one caption alone (no padding): [L, Dt]."""
    with torch.no_grad():
        return ref(input_ids=tok([caption], return_tensors="pt").input_ids).last_hidden_state[0]


def test_preprocess_stores_each_captions_real_rows(cache):
    base, cfg, tok, ref = cache
    m = read_manifest(base / "lat16")["text"]
    assert {k: m[k] for k in ("encoder", "name", "model_type", "dim", "max_tokens", "dtype", "empty")} == {
        "encoder": "t5", "name": "umt5", "model_type": "umt5", "dim": DIM, "max_tokens": 8, "dtype": "float16",
        "empty": EMPTY_TEXT}
    stored = _stored(base / "lat16")
    assert len(stored) == 8
    for key, (caption, rows) in stored.items():
        want = _direct(tok, ref, caption)                      # 5 words + </s>: 6 rows, no padding rows
        assert rows.dtype == np.float16 and rows.shape == (6, DIM), (key, rows.shape)
        # float16 storage: within half an ulp (2^-11 relative) plus float32 noise of batched encoding
        np.testing.assert_allclose(rows.astype(np.float32), want.numpy(), rtol=2 ** -11, atol=1e-6)
    empty = np.load(base / "lat16" / EMPTY_TEXT, allow_pickle=False)
    want = _direct(tok, ref, "")
    assert empty.shape == (1, DIM) == tuple(want.shape)         # the empty caption is its </s> row
    np.testing.assert_allclose(empty.astype(np.float32), want.numpy(), rtol=2 ** -11, atol=1e-6)
    # bfloat16 storage (uint16 bits) read back by the latent stream: the encoder's rows in bfloat16
    preprocess(_on(cfg, cfg.data.path, "text.cache_dtype=bfloat16"), base / "lat_bf16", progress=False)
    stream, _, _ = latent_stream(_on(cfg, base / "lat_bf16"), 0, 1, SkipStats(), features=True)
    samples = list(stream.samples())
    assert len(samples) == 8 and read_manifest(base / "lat_bf16")["text"]["dtype"] == "bfloat16"
    for s in samples:
        assert s.text.dtype == torch.bfloat16 and s.text.shape == (6, DIM)
        torch.testing.assert_close(s.text.float(), _direct(tok, ref, s.caption), rtol=2 ** -8, atol=1e-6)
    # the other storage dtypes round-trip exactly what the encoder's rows cast to them
    x = torch.randn(7, DIM) * 30
    assert torch.equal(features_from_npy(features_to_npy(x, "bfloat16"), "bfloat16"), x.to(torch.bfloat16))
    assert features_to_npy(x, "bfloat16").dtype == np.uint16
    assert torch.equal(features_from_npy(features_to_npy(x, "float32"), "float32"), x)


def test_features_that_overflow_float16_are_skipped_and_counted(cache, tmp_path):
    base, cfg, tok, ref = cache
    src = list_shards(base / "raw", "train")[0]

    def text(captions):                                       # the first caption's rows overflow float16
        return [features_to_npy(torch.full((2, DIM), 7e4 if i == 0 else 1.0), "float16") for i in range(len(captions))]
    n, skipped = preprocess_shard(src, tmp_path / "train-000000.tar", cfg, lambda x: torch.zeros(1, 4, 1, 2, 2), text,
                                  "cpu")
    assert (n, skipped) == (3, {"nonfinite_text": 1})
    assert json.loads((tmp_path / "train-000000.stats.json").read_text())["samples"] == 3
    assert len(_stored(tmp_path)) == 3


def test_loader_carries_the_rows_and_dropout_swaps_in_the_empty_caption(cache):
    base, cfg, tok, ref = cache
    lat = _on(cfg, base / "lat16")
    cached = cached_text(lat, latent=True)
    assert cached.dim == DIM and cached.empty.shape == (1, DIM) and cached.empty.dtype == torch.float32
    stored = _stored(base / "lat16")
    stream, encode, shape = latent_stream(lat, 0, 1, SkipStats(), features=True)
    loader = PackedLoader(stream, encode, lat.model.patch, 700, caption_dropout=0.5, seed=1,
                          latent_shape=shape, empty_text=cached.empty)
    seen = {"kept": 0, "dropped": 0}
    for _ in range(6):
        batch = next(loader)
        cu = batch.text.cu_seqlens.tolist()
        assert len(cu) == batch.num_samples + 1 and batch.text.ctx.shape == (cu[-1], DIM)
        for b, key in enumerate(batch.keys):
            rows = batch.text.ctx[cu[b]:cu[b + 1]]
            if batch.captions[b] == "":
                seen["dropped"] += 1
                assert torch.equal(rows, cached.empty)
            else:
                seen["kept"] += 1
                assert batch.captions[b] == stored[key][0]
                assert torch.equal(rows, torch.from_numpy(stored[key][1].astype(np.float32)))
    assert seen["kept"] and seen["dropped"], seen
    moved = batch.to("cpu", torch.bfloat16)
    assert moved.text.ctx.dtype == torch.bfloat16 and torch.equal(moved.text.cu_seqlens, batch.text.cu_seqlens)
    # a stream of features without the empty caption cannot drop captions
    stream, encode, shape = latent_stream(lat, 0, 1, SkipStats(), features=True)
    with pytest.raises(RuntimeError, match="empty_text"):
        next(PackedLoader(stream, encode, lat.model.patch, 700, caption_dropout=0.99, latent_shape=shape))


def _tiny(cfg, *overrides):
    return _on(cfg, cfg.data.path, "model.depth=1", "model.width=24", "model.heads=2", *overrides)


def test_model_without_encoder_equals_online_and_pads_context(cache):
    base, cfg, tok, ref = cache
    small = _tiny(cfg)
    torch.manual_seed(0)
    online = TextToVideo(small)
    with torch.no_grad():     # the zero-initialised gates / final layer make a fresh DiT ignore its inputs
        for p in online.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    cached = TextToVideo(small, text_dim=DIM)
    assert online._frozen_text and not cached._frozen_text and cached.text is None
    cached.load_state_dict(online.state_dict())
    captions = ["a red circle moving left", "", "a blue square moving up"]
    rows = PackedText.of([_direct(tok, ref, c) for c in captions])
    cu, grid = torch.tensor([0, 6, 10, 22], dtype=torch.int32), torch.tensor([[1, 2, 3], [1, 2, 2], [2, 2, 3]],
                                                                            dtype=torch.int32)
    x = torch.randn(int(cu[-1]) * online.dit.in_dim, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.2, 0.5, 0.9])
    with torch.no_grad():
        want = online(x, online.layout(cu, grid), t, captions)
        got = cached(x, cached.layout(cu, grid), t, rows)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    with torch.no_grad():     # and the text matters: other rows, another output
        other = cached(x, cached.layout(cu, grid), t, PackedText(rows.ctx.flip(0), rows.cu_seqlens))
    assert not torch.allclose(other, got, rtol=1e-3, atol=1e-4)
    assert cached.text_lengths(rows) == online.text_lengths(captions) == [6, 1, 6]
    with pytest.raises(RuntimeError, match="cached text features"):
        cached(x, cached.layout(cu, grid), t, captions)
    # context_rows: the DiT sees each caption's rows then zero rows, 10 per caption
    padded = TextToVideo(_tiny(cfg, "text.context_rows=10"), text_dim=DIM)
    padded.load_state_dict(online.state_dict())
    ctx, cu_ctx = padded.encode_text(rows, "cpu")
    assert cu_ctx.tolist() == [0, 10, 20, 30] and padded.text_lengths(rows) == [10, 10, 10]
    for b, n in enumerate(rows.lengths()):
        torch.testing.assert_close(ctx[10 * b:10 * b + n], rows.ctx[rows.cu_seqlens[b]:rows.cu_seqlens[b + 1]],
                                   rtol=0, atol=0)
        assert not ctx[10 * b + n:10 * (b + 1)].any()
    with torch.no_grad():
        want = online.dit(x, online.layout(cu, grid), t, ctx, cu_ctx)
        got = padded(x, padded.layout(cu, grid), t, rows)
        unpadded = cached(x, cached.layout(cu, grid), t, rows)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert not torch.allclose(got, unpadded, rtol=1e-3, atol=1e-4)    # zero rows are attended to


def test_pad_context_odd_lengths():
    g = torch.Generator().manual_seed(2)
    lens = [1, 7, 3, 13]
    cu = torch.tensor([0, *np.cumsum(lens)], dtype=torch.int32)
    ctx = torch.randn(int(cu[-1]), 5, generator=g)
    out, cu_out = pad_context(ctx, cu, 13)
    want = torch.zeros(4 * 13, 5)
    for b, n in enumerate(lens):
        want[13 * b:13 * b + n] = ctx[cu[b]:cu[b + 1]]
    assert torch.equal(out, want) and cu_out.tolist() == [0, 13, 26, 39, 52]
    with pytest.raises(ValueError, match="context_rows=12"):
        pad_context(ctx, cu, 12)


def test_sequence_parallel_segments_take_their_samples_rows(cache):
    """step_input under sp = 2: each rank's segments carry their own sample's cached rows, as the
    caption path carries their captions (the pad segment: any rows; it attends only to itself)."""
    base, cfg, tok, ref = cache
    small = _tiny(cfg)
    model = TextToVideo(small, text_dim=DIM)
    g = torch.Generator().manual_seed(3)
    cu, grid = torch.tensor([0, 6, 11, 23], dtype=torch.int32), torch.tensor([[1, 2, 3], [1, 1, 5], [2, 2, 3]],
                                                                            dtype=torch.int32)
    p = model.dit.in_dim
    x0 = torch.randn(int(cu[-1]) * p, generator=g)
    rows = PackedText.of([torch.randn(n, DIM, generator=g) for n in (4, 1, 6)])
    captions = ["c0", "c1", "c2"]
    t, noise, given = torch.rand(3, generator=g), torch.randn(x0.shape, generator=g), torch.zeros(23, dtype=torch.bool)
    for rank in range(2):
        dims = ParallelDims(world=2, rank=rank, sp=2)
        by_caption = step_input(PackedBatch(x0, cu, 12, grid, captions), t, noise, given, small, model.dit.kernels, dims)
        by_rows = step_input(PackedBatch(x0, cu, 12, grid, captions, text=rows), t, noise, given, small,
                             model.dit.kernels, dims)
        assert len(by_rows.text) == len(by_caption.text) == by_rows.layout.cu_seqlens.numel() - 1
        for s, caption in enumerate(by_caption.text):
            b = captions.index(caption) if caption else 2
            a, z = by_rows.text.cu_seqlens[s:s + 2].tolist()
            assert torch.equal(by_rows.text.ctx[a:z], rows.ctx[rows.cu_seqlens[b]:rows.cu_seqlens[b + 1]])
        assert torch.equal(by_rows.xt, by_caption.xt) and torch.equal(by_rows.t, by_caption.t)


def _manifest_dir(path, text):
    path.mkdir(parents=True, exist_ok=True)
    (path / "latents.json").write_text(json.dumps({"latent_channels": 4, "ft": 2, "fh": 4, "patch": [1, 2, 2],
                                                   "text": text}))
    return path


def test_mismatches_are_refused_by_name(cache, tmp_path):
    base, cfg, tok, ref = cache
    lat = base / "lat16"
    with pytest.raises(ConfigError, match="text.source.*hash is trained with the DiT"):
        cached_text(_on(cfg, lat, "text.encoder=hash", "text.source=cached"), latent=True)
    assert cached_text(_on(cfg, lat, "text.encoder=hash"), latent=True) is None       # the demo path: online
    assert cached_text(_on(cfg, lat, "text.source=online"), latent=True) is None
    with pytest.raises(ConfigError, match="text.source.*raw shards"):
        cached_text(_on(cfg, base / "raw", "text.source=cached"), latent=False)
    hashed = _manifest_dir(tmp_path / "hashed", {"encoder": "hash", "vocab": 4096, "max_tokens": 32, "dim": 0})
    with pytest.raises(ConfigError, match="text.encoder.*hash token ids, not frozen-encoder features"):
        cached_text(_on(cfg, hashed), latent=True)
    renamed = tmp_path / "other"
    renamed.mkdir()
    shutil.copy(base / "umt5" / "config.json", renamed / "config.json")
    with pytest.raises(ConfigError, match="text.path.*name is 'other'.*'umt5'"):
        cached_text(_on(cfg, lat, f"text.path={renamed}"), latent=True)
    wider = tmp_path / "wide" / "umt5"
    wider.mkdir(parents=True)
    c = json.loads((base / "umt5" / "config.json").read_text())
    (wider / "config.json").write_text(json.dumps({**c, "d_model": 32}))
    with pytest.raises(ConfigError, match="text.path.*dim is 32.*20"):
        cached_text(_on(cfg, lat, f"text.path={wider}"), latent=True)
    with pytest.raises(ConfigError, match="text.max_tokens.*16.*8"):
        cached_text(_on(cfg, lat, "text.max_tokens=16"), latent=True)
    m = read_manifest(lat)["text"]
    old = _manifest_dir(tmp_path / "old", {k: v for k, v in m.items() if k not in ("empty", "dtype")})
    with pytest.raises(ConfigError, match="lack the empty caption"):
        cached_text(_on(cfg, old), latent=True)
    with pytest.raises(ValueError, match="hash encoder"):
        TextToVideo(_on(cfg, lat, "text.encoder=hash"), text_dim=DIM)
    for bad, key in (("text.context_rows=4", "text.context_rows"), ("text.source=disk", "text.source"),
                     ("text.cache_dtype=int8", "text.cache_dtype")):
        with pytest.raises(ConfigError, match=key):
            _on(cfg, lat, bad)


@pytest.mark.slow
def test_train_on_cached_features_without_an_encoder_equals_online(cache, tmp_path):
    """`sora train` on latent shards with cached features, with text.path a directory holding the
    encoder's config.json only (no weights, no tokenizer: building the encoder would fail), logs the
    losses of a run that encodes every caption online with the real encoder (text.source=online).
    float32 storage: equal up to float32 noise of batched encoding; float16 storage: within its rounding."""
    base, cfg, tok, ref = cache
    common = [f"{ROOT}/configs/demo.yaml", f"vae.run={base / 'vae'}", "vae.channels=8", "data.fps=0",
              "text.encoder=t5", "text.max_tokens=8"]
    r = sora("preprocess", *common, f"data.path={base / 'raw'}", f"text.path={base / 'umt5'}",
             "text.cache_dtype=float32", "--out", str(tmp_path / "lat32"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    config_only = tmp_path / "elsewhere" / "umt5"
    config_only.mkdir(parents=True)
    shutil.copy(base / "umt5" / "config.json", config_only / "config.json")
    with pytest.raises((OSError, ValueError)):       # what building the encoder there does: no tokenizer, no weights
        PretrainedTextEncoder(config_only)
    train = ["train", *common, *TINY, "train.steps=3", "data.caption_dropout=0.5", "text.context_rows=10"]
    runs = {}
    for name, data, text in (("online", "lat32", ["text.source=online", f"text.path={base / 'umt5'}"]),
                             ("cached32", "lat32", [f"text.path={config_only}"]),
                             ("cached16", base / "lat16", [f"text.path={config_only}"])):
        r = sora(*train, f"data.path={tmp_path / data}", f"run.dir={tmp_path / name}", *text, cwd=tmp_path)
        assert r.returncode == 0, (name, r.stderr[-3000:])
        runs[name] = [metrics(tmp_path / name)[s]["loss"] for s in range(3)]
    np.testing.assert_allclose(runs["cached32"], runs["online"], rtol=1e-6)   # bitwise on this CPU
    np.testing.assert_allclose(runs["cached16"], runs["online"], rtol=1e-4)   # measured 2e-7
