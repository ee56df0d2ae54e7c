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
import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import torch

from sora.data.shards import Group, SkipStats
from sora.data.stream import Decoded, SampleStream
from sora.shapes import ShapeRules, patch_grid

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


def read_latent(group: Group, stats: SkipStats, latent_channels: int, text_dim: int = 0
                ) -> tuple[np.ndarray, np.ndarray, dict] | None:
    """(latent [C, T', H', W'] float32, text array, meta) of one latent-shard sample whose header is
    checked, or None after counting why not. text_dim > 0: text.npy must hold [L, text_dim]
    features; 0: int [L] token ids."""
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
    want_text = (2, "f") if text_dim else (1, "iu")
    if (text.ndim != want_text[0] or text.dtype.kind not in want_text[1] or text.shape[0] < 1
            or (text_dim and text.shape[1] != text_dim)):
        stats.skip("bad_text_shape", group.key, f"{text.dtype} {text.shape}")
        return None
    latent = latent.astype(np.float32)
    if not np.isfinite(latent).all() or (text_dim and not np.isfinite(text).all()):
        stats.skip("nonfinite_latent", group.key)
        return None
    return latent, text, meta


class LatentStream(SampleStream):
    """The sample stream of latent shards: latents [C, T', H', W']. A latent longer than the token
    budget is cut to its first latent frames (a causal VAE's first k latent frames are exactly the
    encoding of the first 1 + ft(k-1) video frames), its sides centre-cropped to whole patches;
    samples below data.min_tokens_per_sample are skipped."""

    def __init__(self, paths: list[str], data_cfg, latent_channels: int, rules: ShapeRules, *args,
                 text_dim: int = 0, **kwargs):
        super().__init__(paths, data_cfg, rules, *args, **kwargs)
        self.channels, self.text_dim = latent_channels, text_dim

    def decode(self, group: Group, caption: str, fps: float) -> Decoded | None:
        read = read_latent(group, self.stats, self.channels, self.text_dim)
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
        return Decoded(group.key, torch.from_numpy(z), caption, fps)


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
    stream = LatentStream(list_shards(cfg.data.path, cfg.data.split), cfg.data, c, ShapeRules.of(cfg),
                          dp_rank, dp, cfg.run.seed, stats, text_dim=text_dim)
    return stream, (lambda z: z), (lambda t, h, w: (c, t, h, w))
