"""Latent shards (written by `sora preprocess`): KEY.latent.npy + KEY.text.npy + KEY.json per sample.

- KEY.latent.npy: float16 [C, T', H', W'], the normalised latent the DiT sees (what `vae.encode` returns).
- KEY.text.npy: the caption's text-encoder input or output: int32 [L] token ids for the hash encoder
  (trained with the DiT, so only its tokens can be cached); for a frozen encoder its L real output
  rows [L, Dt] (no padding rows) in text.dtype: float16, float32, or bfloat16 stored as uint16 bits.
- KEY.json: {"caption", "fps", "frames", "height", "width", "latent_shape", "text_shape"}.
- DIR/latents.json: what made them (VAE and its factors, text encoder, patch), checked by the reader.
  For a frozen encoder, "text" names it (encoder, path, name, model_type, dim, max_tokens, dtype) and
  "empty" the file (DIR/text_empty.npy) with the empty caption's rows, for caption dropout.

Training reads the features (`cached_text`): the trainer builds no text encoder, and refuses a config
whose encoder differs from the one that made the shards.

Reading is as guarded as for raw shards: .npy files are parsed with allow_pickle=False (an object
array is refused, never unpickled), pickle members are never read, and a sample with a missing or
malformed array, a shape that disagrees with its json or the manifest, or a non-finite value is
skipped and counted by reason. Training on these shards loads neither the VAE nor the text encoder.
"""
from __future__ import annotations

import io
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sora.data.shards import Group, SkipStats
from sora.data.stream import Decoded, SampleStream
from sora.shapes import ShapeRules, patch_grid

log = logging.getLogger("sora.data")

MANIFEST = "latents.json"
EMPTY_TEXT = "text_empty.npy"
# how frozen-encoder features are stored: text.cache_dtype -> numpy dtype of KEY.text.npy
TEXT_DTYPES = {"float16": np.float16, "bfloat16": np.uint16, "float32": np.float32}


def is_latent_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_manifest(path: str | os.PathLike) -> dict:
    return json.loads((Path(path) / MANIFEST).read_text())


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _load_npy(data: bytes) -> np.ndarray:
    """np.load that never unpickles: object arrays raise ValueError."""
    return np.load(io.BytesIO(data), allow_pickle=False)


def features_to_npy(features: torch.Tensor, dtype: str) -> np.ndarray:
    """Encoder rows [L, Dt] -> the stored array (bfloat16 as its uint16 bits: numpy has no bfloat16)."""
    if dtype == "bfloat16":
        return features.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    with np.errstate(over="ignore"):              # float16 overflow becomes inf: preprocess skips and counts it
        return features.float().numpy().astype(TEXT_DTYPES[dtype])


def features_from_npy(array: np.ndarray, dtype: str) -> torch.Tensor:
    """The stored array -> rows [L, Dt] as a tensor in the stored precision (float16 / bfloat16 / float32)."""
    if dtype == "bfloat16":
        return torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(array))


def read_latent(group: Group, stats: SkipStats, latent_channels: int, text_dim: int = 0, text_dtype: str = "float16"
                ) -> tuple[np.ndarray, np.ndarray, dict] | None:
    """(latent [C, T', H', W'] float32, text array, meta) of one latent-shard sample whose header is
    checked, or None after counting why not. text_dim > 0: text.npy must hold [L, text_dim]
    features stored as text_dtype; 0: int [L] token ids."""
    if "latent.npy" not in group.members or "text.npy" not in group.members:
        stats.skip("missing_latent", group.key, f"members: {sorted(group.exts)}")
        return None
    try:
        latent = _load_npy(group.members["latent.npy"])
        text = _load_npy(group.members["text.npy"])
        meta = json.loads(group.members["json"].decode("utf-8"))
    except Exception as e:  # noqa: BLE001 - np.load raises many types on garbage
        stats.skip("bad_npy", group.key, f"{type(e).__name__}: {e}")
        return None
    if (latent.ndim != 4 or latent.shape[0] != latent_channels or min(latent.shape) < 1
            or latent.dtype.kind != "f" or list(latent.shape) != list(meta.get("latent_shape", []))):
        stats.skip("bad_latent_shape", group.key,
                   f"{latent.dtype} {latent.shape}, json says {meta.get('latent_shape')}, {latent_channels} channels expected")
        return None
    if text_dim:
        bad = text.ndim != 2 or text.dtype != TEXT_DTYPES[text_dtype] or text.shape[1] != text_dim
    else:
        bad = text.ndim != 1 or text.dtype.kind not in "iu"
    if bad or text.shape[0] < 1:
        stats.skip("bad_text_shape", group.key, f"{text.dtype} {text.shape}")
        return None
    latent = latent.astype(np.float32)
    if not np.isfinite(latent).all() or (text_dim and not features_from_npy(text, text_dtype).isfinite().all()):
        stats.skip("nonfinite_latent", group.key)
        return None
    return latent, text, meta


class LatentStream(SampleStream):
    """The sample stream of latent shards: latents [C, T', H', W']. A latent longer than the token
    budget is cut to its first latent frames (a causal VAE's first k latent frames are exactly the
    encoding of the first 1 + ft(k-1) video frames), its sides centre-cropped to whole patches;
    samples below data.min_tokens_per_sample are skipped. `features`: each sample carries its
    caption's cached encoder rows [L, text_dim] (in the stored precision) as Decoded.text."""

    def __init__(self, paths: list[str], data_cfg, latent_channels: int, rules: ShapeRules, *args,
                 text_dim: int = 0, text_dtype: str = "float16", features: bool = False, **kwargs):
        super().__init__(paths, data_cfg, rules, *args, **kwargs)
        if features and not text_dim:
            raise ValueError("LatentStream: features=True needs the features' text_dim")
        self.channels, self.text_dim, self.text_dtype, self.features = latent_channels, text_dim, text_dtype, features

    def decode(self, group: Group, caption: str, fps: float) -> Decoded | None:
        read = read_latent(group, self.stats, self.channels, self.text_dim, self.text_dtype)
        if read is None:
            return None
        z = read[0]                                                      # [C, T', H', W']
        fit = self.rules.fit_latent(*z.shape[1:], self.cfg.max_frames, self.cfg.max_tokens_per_sample)
        if fit is None:
            if self.rules.fit_latent(*z.shape[1:], self.cfg.max_frames, math.inf) is None:
                self.stats.skip("too_small", group.key, f"latent {z.shape} makes no token")
            else:
                self.stats.skip("too_many_tokens", group.key, f"one latent frame of {z.shape} exceeds the token budget")
            return None
        t, h, w = fit
        tokens = math.prod(patch_grid(t, h, w, self.rules.patch))
        if tokens < self.cfg.min_tokens_per_sample:
            self.stats.skip("too_few_tokens", group.key, f"latent {z.shape} makes {tokens} tokens")
            return None
        top, left = (z.shape[2] - h) // 2, (z.shape[3] - w) // 2
        z = np.ascontiguousarray(z[:, :t, top:top + h, left:left + w])
        text = features_from_npy(read[1], self.text_dtype) if self.features else None    # [L, Dt]
        return Decoded(group.key, torch.from_numpy(z), caption, fps, text)


def uses_latent_shards(cfg) -> bool:
    """Whether data.path holds latent shards (data.format, or for `auto` the presence of latents.json);
    when it does, the manifest must agree with the config's VAE factors and patch."""
    from sora.config import ConfigError

    d = cfg.data
    if d.format == "raw" or (d.format == "auto" and not is_latent_dir(d.path)):
        return False
    if not is_latent_dir(d.path):
        raise ConfigError(f"config key 'data.format': latent, but '{d.path}' has no {MANIFEST} (run `sora preprocess`)")
    m = read_manifest(d.path)
    for key, mine in (("vae.latent_channels", cfg.vae.latent_channels), ("vae.ft", cfg.vae.ft), ("vae.fh", cfg.vae.fh),
                      ("model.patch", list(cfg.model.patch))):
        theirs = m.get(key.split(".")[1])
        if theirs != mine:
            raise ConfigError(f"config key '{key}' is {mine} but the latent shards in '{d.path}' were made with {theirs}")
    return True


def latent_stream(cfg, dp_rank: int, dp: int, stats: SkipStats, features: bool = False):
    """(stream, encode, latent_shape) for PackedLoader on latent shards: the stream yields latents,
    so encoding is the identity and a sample's latent shape is its own. `features`: samples carry
    their cached text rows (see `cached_text`)."""
    from sora.data.shards import list_shards

    c = cfg.vae.latent_channels
    text = read_manifest(cfg.data.path).get("text", {})
    stream = LatentStream(list_shards(cfg.data.path, cfg.data.split), cfg.data, c, ShapeRules.of(cfg),
                          dp_rank, dp, cfg.run.seed, stats, text_dim=int(text.get("dim", 0) or 0),
                          text_dtype=text.get("dtype", "float16"), features=features)
    return stream, (lambda z: z), (lambda t, h, w: (c, t, h, w))


@dataclass
class CachedText:
    """The frozen encoder's features held by latent shards: their width and the empty caption's rows."""
    dim: int
    empty: torch.Tensor          # [L0, dim] float32: caption dropout's (and CFG's) unconditional caption


def write_empty_text(out: Path, rows: np.ndarray) -> None:
    """DIR/text_empty.npy, atomically (every preprocess rank writes the same bytes)."""
    tmp = out / f"{EMPTY_TEXT}.tmp{os.getpid()}"
    tmp.write_bytes(npy_bytes(rows))
    tmp.replace(out / EMPTY_TEXT)


def cached_text(cfg, latent: bool) -> CachedText | None:
    """Whether training reads text features from the latent shards (text.source: `cached`, or `auto`
    on latent shards with a frozen encoder) and, if so, what they are; None: captions are encoded in
    the trainer. Raises ConfigError, naming the key, when the config asks for cached features the
    shards do not hold, or when the shards were made by another encoder than the config's."""
    from sora.config import ConfigError
    from sora.models.pretrained import text_model_info

    t, src = cfg.text, cfg.text.source
    if src == "online" or (src == "auto" and (not latent or t.encoder == "hash")):
        return None
    if t.encoder == "hash":
        raise ConfigError("config key 'text.source' is cached, but text.encoder=hash is trained with the DiT, so its "
                          "features change every step and cannot be cached (use a frozen encoder: text.encoder=t5)")
    if not latent:
        raise ConfigError(f"config key 'text.source' is cached, but '{cfg.data.path}' holds raw shards: cached "
                          "features come from latent shards (`sora preprocess`)")
    m = read_manifest(cfg.data.path).get("text", {})
    redo = (f"re-run `sora preprocess` with text.encoder={t.encoder} text.path={t.path}, or set text.source=online "
            "to encode captions in the trainer")
    if m.get("encoder") != t.encoder or not m.get("dim"):
        raise ConfigError(f"config key 'text.encoder' is {t.encoder}, but the latent shards in '{cfg.data.path}' hold "
                          f"{m.get('encoder', 'no')} {'token ids' if m.get('encoder') == 'hash' else 'text'}, not "
                          f"frozen-encoder features: {redo}")
    mine = {"name": Path(os.path.abspath(t.path)).name, "max_tokens": t.max_tokens}
    if (Path(t.path) / "config.json").is_file():               # the config only: no weights are loaded
        mine["model_type"], dim = text_model_info(t.path)
        mine.update({"dim": dim} if dim else {})
    for key, value in mine.items():
        if m.get(key) != value:
            name = "text.max_tokens" if key == "max_tokens" else "text.path"
            raise ConfigError(f"config key '{name}': the text encoder's {key} is {value!r}, but the latent shards in "
                              f"'{cfg.data.path}' hold features of {m.get(key)!r} ({m.get('name')}): {redo}")
    if m.get("dtype") not in TEXT_DTYPES or m.get("empty") != EMPTY_TEXT or not (Path(cfg.data.path) / EMPTY_TEXT).is_file():
        raise ConfigError(f"config key 'data.path': the latent shards in '{cfg.data.path}' lack the empty caption's "
                          f"features or their dtype (made by an older `sora preprocess`): {redo}")
    empty = _load_npy((Path(cfg.data.path) / EMPTY_TEXT).read_bytes())
    if empty.ndim != 2 or empty.shape[0] < 1 or empty.shape[1] != m["dim"] or empty.dtype != TEXT_DTYPES[m["dtype"]]:
        raise ConfigError(f"config key 'data.path': '{EMPTY_TEXT}' in '{cfg.data.path}' holds {empty.dtype} "
                          f"{empty.shape}, not {m['dtype']} [L, {m['dim']}]")
    empty = features_from_npy(empty, m["dtype"]).float()
    if not empty.isfinite().all():
        raise ConfigError(f"config key 'data.path': the empty caption's features in '{cfg.data.path}' are not finite "
                          "(float16 overflow? preprocess with text.cache_dtype=bfloat16)")
    return CachedText(int(m["dim"]), empty)
