"""Latent shards (written by `sora preprocess`): KEY.latent.npy + KEY.text.npy + KEY.json per sample.

- KEY.latent.npy: float16 [C, T', H', W'], the normalised latent the DiT sees (what `vae.encode` returns).
- KEY.text.npy: the caption's text-encoder input or output: int32 [L] token ids for the hash encoder
  (trained with the DiT, so only its tokens can be cached), float16 [L, Dt] features for a frozen encoder.
- KEY.json: {"caption", "fps", "frames", "height", "width", "latent_shape", "text_shape"}.
- DIR/latents.json: what made them (VAE and its factors, text encoder, patch), checked by the reader.

Reading is as guarded as for raw shards: .npy files are parsed with allow_pickle=False (an object
array is refused, never unpickled), pickle members are never read, and a sample with a missing or
malformed array, a shape that disagrees with its json or the manifest, or a non-finite value is
skipped and counted by reason. Training on these shards loads neither the VAE nor the text encoder.
"""
from __future__ import annotations

import io
import itertools
import json
import logging
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from sora.data.atomic import write_json_atomic, write_shard_atomic  # noqa: F401 (sora preprocess imports them from here)
from sora.data.pipeline import epoch_shard_order, mix_images, shuffle_buffered
from sora.data.shards import SkipStats, _iter_groups, _parse_json

log = logging.getLogger("sora.data")

MANIFEST = "latents.json"


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


def iter_latent_samples(paths: list[str], stats: SkipStats, latent_channels: int, text_dim: int = 0
                        ) -> Iterator[tuple[str, np.ndarray, np.ndarray, dict]]:
    """(key, latent [C, T', H', W'] float32, text array, meta) of good samples, in shard order.
    text_dim > 0: text.npy must hold [L, text_dim] features; 0: int [L] token ids."""
    for path in paths:
        for group in _iter_groups(os.fspath(path), stats):
            pickled = sorted(e for e in group.exts if e.rsplit(".", 1)[-1] in ("pyd", "pickle", "pkl", "pth", "pt"))
            if pickled:
                stats.skip("pickle_payload", group.key, f"members {pickled} are never loaded")
                continue
            if group.too_large:
                stats.skip("member_too_large", group.key, group.too_large)
                continue
            parsed = _parse_json(group, stats)
            if parsed is None:
                continue
            if "latent.npy" not in group.members or "text.npy" not in group.members:
                stats.skip("missing_latent", group.key, f"members: {sorted(group.exts)}")
                continue
            try:
                latent = _load_npy(group.members["latent.npy"])
                text = _load_npy(group.members["text.npy"])
                meta = json.loads(group.members["json"].decode("utf-8"))
            except Exception as e:  # noqa: BLE001 - np.load raises many types on garbage
                stats.skip("bad_npy", group.key, f"{type(e).__name__}: {e}")
                continue
            if (latent.ndim != 4 or latent.shape[0] != latent_channels or min(latent.shape) < 1
                    or latent.dtype.kind != "f" or list(latent.shape) != list(meta.get("latent_shape", []))):
                stats.skip("bad_latent_shape", group.key,
                           f"{latent.dtype} {latent.shape}, json says {meta.get('latent_shape')}, {latent_channels} channels expected")
                continue
            want_text = (2, "f") if text_dim else (1, "iu")
            if (text.ndim != want_text[0] or text.dtype.kind not in want_text[1] or text.shape[0] < 1
                    or (text_dim and text.shape[1] != text_dim)):
                stats.skip("bad_text_shape", group.key, f"{text.dtype} {text.shape}")
                continue
            latent = latent.astype(np.float32)
            if not np.isfinite(latent).all() or (text_dim and not np.isfinite(text).all()):
                stats.skip("nonfinite_latent", group.key)
                continue
            meta["caption"], meta["fps"] = parsed
            yield group.key, latent, text, meta


class LatentStream:
    """Infinite stream of (key, latent [C, T', H', W'], caption) from latent shards, reshuffled every
    epoch, split by data-parallel rank like VideoStream. Latents longer than the token budget are
    cut to their first latent frames (a causal VAE's first k latent frames are exactly the encoding
    of the first 1 + ft(k-1) video frames); samples below data.min_tokens_per_sample are skipped;
    data.image_ratio sets the share of images."""

    def __init__(self, paths: list[str], data_cfg, latent_channels: int, ft: int, patch, dp_rank: int = 0,
                 dp_size: int = 1, seed: int = 0, stats: SkipStats | None = None, epochs: int | None = None,
                 text_dim: int = 0):
        from sora.data.loader import shards_for_rank

        self.all_paths = sorted(paths)
        self.paths = shards_for_rank(self.all_paths, dp_rank, dp_size)
        self.slice_samples = len(self.all_paths) < dp_size
        self.cfg, self.channels, self.ft, self.patch = data_cfg, latent_channels, ft, tuple(patch)
        self.dp_rank, self.dp_size, self.seed, self.epochs = dp_rank, dp_size, seed, epochs
        self.stats = stats if stats is not None else SkipStats()
        self.text_dim = text_dim

    def _fit(self, key: str, z: np.ndarray) -> np.ndarray | None:
        pt, ph, pw = self.patch
        _, t, h, w = z.shape
        t = min(t, (self.cfg.max_frames - 1) // self.ft + 1)
        t -= t % pt
        h, w = h - h % ph, w - w % pw
        per_frame = (h // ph) * (w // pw)
        if per_frame == 0 or t == 0:
            self.stats.skip("too_small", key, f"latent {z.shape} makes no token")
            return None
        t = min(t, self.cfg.max_tokens_per_sample // per_frame // pt * pt)
        if t == 0:
            self.stats.skip("too_many_tokens", key, f"one latent frame of {z.shape} exceeds the token budget")
            return None
        if t // pt * per_frame < self.cfg.min_tokens_per_sample:
            self.stats.skip("too_few_tokens", key, f"latent {z.shape} makes {t // pt * per_frame} tokens")
            return None
        top, left = (z.shape[2] - h) // 2, (z.shape[3] - w) // 2
        return z[:, :t, top:top + h, left:left + w]

    def _epoch(self, epoch: int):
        order = epoch_shard_order(self.paths, self.seed, epoch, self.dp_rank, self.slice_samples)
        rng = np.random.default_rng([self.seed, self.dp_rank, epoch])

        def fitted():
            samples = iter_latent_samples(order, self.stats, self.channels, self.text_dim)
            for i, (key, z, _, meta) in enumerate(samples):
                if self.slice_samples and i % self.dp_size != self.dp_rank:
                    continue
                z = self._fit(key, z)
                if z is not None:
                    yield key, torch.from_numpy(np.ascontiguousarray(z)), meta["caption"]

        yield from shuffle_buffered(fitted(), rng, self.cfg.shuffle_buffer)

    def __iter__(self):
        for epoch in (range(self.epochs) if self.epochs is not None else itertools.count()):
            produced = False
            mix_rng = np.random.default_rng([self.seed, self.dp_rank, epoch, 11])
            for item in mix_images(self._epoch(epoch), getattr(self.cfg, "image_ratio", -1.0), mix_rng,
                                   lambda it: it[1].shape[1] == 1):
                produced = True
                yield item
            if not produced:
                raise RuntimeError(f"no usable sample in latent shards {self.paths} (skips: {self.stats.as_dict()})")


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


def latent_stream(cfg, dp_rank: int, dp: int, stats: SkipStats):
    """(stream, encode, latent_shape) for PackedLoader on latent shards: the stream yields latents,
    so encoding is the identity and a sample's latent shape is its own."""
    from sora.data.shards import list_shards

    c = cfg.vae.latent_channels
    text_dim = int(read_manifest(cfg.data.path).get("text", {}).get("dim", 0) or 0)
    stream = LatentStream(list_shards(cfg.data.path, cfg.data.split), cfg.data, c, cfg.vae.ft, cfg.model.patch,
                          dp_rank, dp, cfg.run.seed, stats, text_dim=text_dim)
    return stream, (lambda z: z), (lambda t, h, w: (c, t, h, w))
