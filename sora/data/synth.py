"""Write the moving-shapes world as WebDataset tar shards plus a manifest.json.

Deterministic per seed: same seed -> byte-identical sample payloads (and tar files: mtime is fixed).
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import webdataset as wds

from sora.data.video_io import encode_mp4, encode_png
from sora.data.world import HELDOUT_COMBOS, TRAIN_COMBOS, WORLD_VERSION, caption, render_clip

FPS = 8
# Up to 4 s: taken at 4 fps (every 2nd frame, data.fps in configs/demo.yaml) these are 1, 5, 9 and 17
# frames; the demo samples 9 and 17. 35 % images: they alone train text -> first frame, and cost few tokens.
FRAMES = (1, 9, 17, 33)
FRAME_PROBS = (0.35, 0.1, 0.25, 0.3)
# Several aspect ratios; (48, 64) and (64, 48) are deliberately absent so the demo can sample an unseen size.
SIZES = ((32, 32), (32, 48), (48, 32), (48, 48), (32, 64), (64, 32), (40, 56), (56, 40), (64, 64))


def _sample(key: str, combo: tuple[str, str, str], rng: np.random.Generator) -> dict:
    """One WebDataset sample dict: media bytes + json bytes."""
    frames = int(rng.choice(FRAMES, p=FRAME_PROBS))
    height, width = SIZES[rng.integers(len(SIZES))]
    clip_rng = np.random.default_rng(rng.integers(2**63))  # per-clip child seed
    clip = render_clip(*combo, frames, height, width, clip_rng)  # [T, H, W, 3]
    meta = {"caption": caption(*combo), "fps": FPS, "frames": frames, "height": height, "width": width}
    sample = {"__key__": key, "json": json.dumps(meta, sort_keys=True).encode("utf-8")}
    if frames == 1:
        sample["png"] = encode_png(clip[0])
    else:
        sample["mp4"] = encode_mp4(clip, FPS)
    return sample


def _write_split(out_dir: str, split: str, n: int, combos, shard_size: int, rng: np.random.Generator) -> list[str]:
    names: list[str] = []
    writer = None
    try:
        for i in range(n):
            if i % shard_size == 0:
                if writer is not None:
                    writer.close()
                names.append(f"{split}-{len(names):06d}.tar")
                # encoder=False: payloads are bytes already, and nothing may ever be pickled.
                writer = wds.TarWriter(os.path.join(out_dir, names[-1]), encoder=False, mtime=0.0)
            combo = combos[rng.integers(len(combos))]
            writer.write(_sample(f"{split}-{i:06d}", combo, rng))
    finally:
        if writer is not None:
            writer.close()
    return names


def synthesize(out_dir: str | os.PathLike, clips: int = 512, seed: int = 0, shard_size: int = 64,
               heldout_clips: int = 32) -> dict:
    """Write train-*.tar, heldout-*.tar and manifest.json into out_dir; return the manifest."""
    if clips < 1 or heldout_clips < 0 or shard_size < 1:
        raise ValueError(f"need clips >= 1, heldout_clips >= 0, shard_size >= 1; "
                         f"got {clips}, {heldout_clips}, {shard_size}")
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    # Independent streams: the held-out set does not change when the training clip count does.
    train_seq, heldout_seq = np.random.SeedSequence(seed).spawn(2)
    train = _write_split(out_dir, "train", clips, TRAIN_COMBOS, shard_size, np.random.default_rng(train_seq))
    heldout = _write_split(out_dir, "heldout", heldout_clips, HELDOUT_COMBOS, shard_size,
                           np.random.default_rng(heldout_seq))
    manifest = {
        "world_version": WORLD_VERSION,
        "seed": seed,
        "clips": clips,
        "heldout_clips": heldout_clips,
        "train": train,
        "heldout": heldout,
        "heldout_prompts": [caption(*c) for c in HELDOUT_COMBOS],
        "frames": list(FRAMES),
        "sizes": [list(s) for s in SIZES],
        "fps": FPS,
    }
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    return manifest


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Write the moving-shapes dataset as WebDataset shards.")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--clips", type=int, default=512, help="training clips")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard-size", type=int, default=64, help="samples per shard")
    p.add_argument("--heldout-clips", type=int, default=32, help="clips of held-out combos")
    args = p.parse_args(argv)
    start = time.perf_counter()
    m = synthesize(args.out, clips=args.clips, seed=args.seed, shard_size=args.shard_size,
                   heldout_clips=args.heldout_clips)
    print(f"wrote {args.clips} train clips in {len(m['train'])} shards and {args.heldout_clips} held-out clips "
          f"in {len(m['heldout'])} shards to {args.out} (seed {args.seed}) in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
