"""`sora preprocess`: raw shards -> latent shards, so that training loads neither the VAE nor the text encoder.

For each raw shard SPLIT-NNNNNN.tar in data.path, OUT/SPLIT-NNNNNN.tar gets, per usable sample,
KEY.latent.npy + KEY.text.npy + KEY.json (see sora/data/latent_shards.py). With a frozen text
encoder (text.encoder=t5, text.path=DIR) KEY.text.npy holds the caption's real encoder rows in
text.cache_dtype, and OUT/text_empty.npy the empty caption's. Samples are prepared as
the raw training path prepares them (data.fps, data.max_frames, token bounds from
data.max_tokens_per_sample / data.min_tokens_per_sample and model.patch), encoded with the latent
mean (deterministic) by the stage-1 VAE in vae.run, or by a diffusers VAE in vae.pretrained, with
vae.chunk_frames / vae.tile for long clips and large frames.

- Resumable: an output shard that exists is finished (it is written to NAME.tar.tmp and renamed),
  and is skipped; a leftover NAME.tar.tmp from an interrupted run is rewritten. Output bytes depend
  only on the input, so an interrupted and resumed run equals an uninterrupted one.
- Parallel: rank r of a world of W (RANK / WORLD_SIZE, as set by `sora-launch local --nproc W`)
  takes shards r::W; no collective communication is needed.
- Per-shard skip counts go to OUT/NAME.stats.json; a progress bar shows clips/s.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sora.config import Config, to_dict
from sora.data.atomic import write_json_atomic, write_shard_atomic
from sora.data.latent_shards import EMPTY_TEXT, MANIFEST, features_to_npy, npy_bytes, write_empty_text
from sora.data.pipeline import VideoStream
from sora.data.shards import SkipStats, list_shards
from sora.shapes import ShapeRules

log = logging.getLogger("sora.preprocess")


def load_encoders(cfg: Config, device):
    """(vae, text) where vae.encode(x) gives the DiT's latent and text(captions) gives one array per caption."""
    if cfg.vae.pretrained:
        from sora.models.pretrained import DiffusersVAE
        from sora.train.artifacts import check_vae_factors

        vae = DiffusersVAE(cfg.vae.pretrained).to(device)
        if cfg.vae.tile:
            vae.set_tiling(cfg.vae.tile, cfg.vae.tile_overlap)
        source = {"pretrained": os.path.abspath(cfg.vae.pretrained), "family": vae.family}
        check_vae_factors(cfg, vae, cfg.vae.pretrained)
        encode = vae.encode
    else:
        from sora.train.artifacts import check_vae_matches, load_vae

        vae, vae_cfg = load_vae(cfg.vae.run, device)
        check_vae_matches(cfg, vae_cfg)
        source = {"run": os.path.abspath(cfg.vae.run)}

        def encode(x):
            return vae.encode(x, chunk_frames=cfg.vae.chunk_frames, tile=cfg.vae.tile, overlap=cfg.vae.tile_overlap)

    if cfg.text.encoder == "hash":
        from sora.models.text import HashTokenizer

        tok = HashTokenizer(cfg.text.vocab, cfg.text.max_tokens)

        def text(captions):
            ids, cu = tok(captions)
            return [ids[cu[i]:cu[i + 1]].numpy().astype(np.int32) for i in range(len(captions))]
        text_info = {"encoder": "hash", "vocab": cfg.text.vocab, "max_tokens": cfg.text.max_tokens, "dim": 0}
    else:
        from sora.models.pretrained import PretrainedTextEncoder, text_model_info

        enc = PretrainedTextEncoder(cfg.text.path, cfg.text.max_tokens)
        dtype = cfg.text.cache_dtype

        def text(captions):                      # each caption's real rows [L, Dt], no padding rows
            ctx, cu = enc.encode(captions)
            return [features_to_npy(ctx[cu[i]:cu[i + 1]], dtype) for i in range(len(captions))]
        path = os.path.abspath(cfg.text.path)
        text_info = {"encoder": cfg.text.encoder, "path": path, "name": os.path.basename(path),
                     "model_type": text_model_info(path)[0], "dim": enc.dim, "max_tokens": cfg.text.max_tokens,
                     "dtype": dtype, "empty": EMPTY_TEXT}
    return encode, text, {"vae": source, "text": text_info}


def _manifest(cfg: Config, info: dict) -> dict:
    return {"format": "sora-latents-v1", "latent_channels": cfg.vae.latent_channels, "ft": cfg.vae.ft,
            "fh": cfg.vae.fh, "patch": list(cfg.model.patch), "dtype": "float16", **info,
            "data": {k: v for k, v in to_dict(cfg)["data"].items()
                     if k in ("fps", "max_frames", "max_tokens_per_sample", "min_tokens_per_sample")}}


def preprocess_shard(src: str, dst: Path, cfg: Config, encode, text, device, batch_captions: int = 32) -> tuple[int, dict]:
    """One raw shard -> one latent shard (atomically). Returns (samples written, skip counts)."""
    stats = SkipStats()
    ready = []                                                  # (key, latent, meta)
    for s in VideoStream([src], cfg.data, ShapeRules.of(cfg), stats=stats).samples():
        with torch.no_grad():
            z = encode(s.data[None].to(device))[0].float().cpu().numpy()    # [C, T', H', W']
        if not np.isfinite(z).all():
            stats.skip("nonfinite_latent", s.key)
            continue
        meta = {"caption": s.caption, "fps": s.fps, "frames": int(s.data.shape[1]), "height": int(s.data.shape[2]),
                "width": int(s.data.shape[3]), "latent_shape": list(z.shape)}
        ready.append((s.key, z.astype(np.float16), meta))
    members, written = [], 0
    for i in range(0, len(ready), batch_captions):
        chunk = ready[i:i + batch_captions]
        for (key, z, meta), t in zip(chunk, text([m["caption"] for _, _, m in chunk])):
            if t.dtype == np.float16 and not np.isfinite(t).all():
                stats.skip("nonfinite_text", key, "text features overflow float16: set text.cache_dtype=bfloat16")
                continue
            meta["text_shape"] = list(t.shape)
            members += [(f"{key}.latent.npy", npy_bytes(z)), (f"{key}.text.npy", npy_bytes(t)),
                        (f"{key}.json", json.dumps(meta, sort_keys=True).encode("utf-8"))]
            written += 1
    write_json_atomic(dst.with_name(dst.name[:-len(".tar")] + ".stats.json"),
                      {"samples": written, "skipped": stats.as_dict()})
    write_shard_atomic(dst, members)
    return written, stats.as_dict()


def preprocess(cfg: Config, out: str | os.PathLike, splits=("train", "heldout"), rank: int | None = None,
               world: int | None = None, progress: bool = True) -> dict:
    rank = int(os.environ.get("RANK", "0")) if rank is None else rank
    world = int(os.environ.get("WORLD_SIZE", "1")) if world is None else world
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for split in splits:
        try:
            shards += list_shards(cfg.data.path, split)
        except FileNotFoundError:
            if split == splits[0]:
                raise
    mine = shards[rank::world]
    todo = [s for s in mine if not (out / os.path.basename(s)).is_file()]
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")
    summary = {"rank": rank, "world": world, "shards": len(mine), "kept": len(mine) - len(todo), "written": 0,
               "samples": 0, "skipped": {}, "seconds": 0.0}
    if todo:
        encode, text, info = load_encoders(cfg, device)
        if info["text"].get("dim"):   # the empty caption's rows: caption dropout's, read with the manifest
            write_empty_text(out, text([""])[0])
        write_json_atomic(out / MANIFEST, _manifest(cfg, info))           # same content from every rank
    log.info("rank %d/%d: %d shards, %d already done, %d to write to %s", rank, world, len(mine),
             summary["kept"], len(todo), out)
    start = time.perf_counter()
    bar = tqdm(todo, desc=f"preprocess[{rank}]", disable=not progress, dynamic_ncols=True, unit="shard")
    for src in bar:
        n, skipped = preprocess_shard(src, out / os.path.basename(src), cfg, encode, text, device)
        summary["written"] += 1
        summary["samples"] += n
        for k, v in skipped.items():
            summary["skipped"][k] = summary["skipped"].get(k, 0) + v
        bar.set_postfix(clips_per_s=f"{summary['samples'] / (time.perf_counter() - start):.1f}")
    summary["seconds"] = time.perf_counter() - start
    summary["clips_per_s"] = summary["samples"] / summary["seconds"] if summary["samples"] else 0.0
    return summary
