"""Writing samples: a clip encoded as it streams in, and the shards of one chunk of work.

The tar layout is `sora synth`'s (KEY.json next to KEY.mp4, or KEY.png for an image; nothing pickled),
so training and `sora preprocess` read ingest output unchanged. A shard is written as NAME.tar.tmp and
renamed when complete (sora.data.atomic): a NAME.tar is always whole, and its bytes depend on its
content only.
"""
from __future__ import annotations

import json
import os

import numpy as np

from sora.data.atomic import AtomicTar
from sora.data.ingest.clips import motion_score
from sora.data.ingest.options import CRF
from sora.data.video_io import Mp4Encoder, encode_png


class ClipEncoder:
    """Frames of one clip -> h264 mp4 bytes, with its motion score; holds one frame, never the clip."""

    def __init__(self, fps: float):
        self.fps = fps
        self._encoder: Mp4Encoder | None = None
        self._prev: np.ndarray | None = None
        self.frames, self.damaged, self._motion = 0, False, 0.0

    def add(self, frame: np.ndarray, damaged: bool = False) -> None:   # frame: uint8 [H, W, 3]
        if self._encoder is None:
            self._encoder = Mp4Encoder(frame.shape[0], frame.shape[1], self.fps, crf=CRF, exact=False)
        else:
            self._motion += motion_score(self._prev, frame)
        self._encoder.add(frame)
        self._prev = frame
        self.frames += 1
        self.damaged = self.damaged or damaged

    @property
    def motion(self) -> float:
        return self._motion / (self.frames - 1) if self.frames > 1 else 0.0

    @property
    def size(self) -> tuple[int, int]:
        return self._encoder.height, self._encoder.width

    def finish(self) -> bytes:
        return self._encoder.finish()

    def close(self) -> None:
        if self._encoder is not None:
            self._encoder.close()


def sample(key: str, meta: dict, media: bytes, ext: str) -> list[tuple[str, bytes]]:
    """The tar members of one sample."""
    return [(f"{key}.json", json.dumps(meta, sort_keys=True).encode("utf-8")), (f"{key}.{ext}", media)]


def image_sample(key: str, frame: np.ndarray, meta: dict) -> list[tuple[str, bytes]]:
    return sample(key, meta, encode_png(frame), "png")


class ChunkShards:
    """Shards SPLIT-CCCCCC-PPP.tar of chunk CCCCCC, `per_shard` samples each, keys SPLIT-CCCCCC-NNNNNN."""

    def __init__(self, out_dir: str, split: str, chunk: int, per_shard: int):
        self.out_dir, self.prefix, self.per_shard = out_dir, f"{split}-{chunk:06d}", per_shard
        self.names: list[str] = []
        self.samples = 0
        self._tar: AtomicTar | None = None
        self._in_shard = 0

    def next_key(self) -> str:
        return f"{self.prefix}-{self.samples:06d}"

    def write(self, members: list[tuple[str, bytes]]) -> None:
        if self._tar is None:
            self.names.append(f"{self.prefix}-{len(self.names):03d}.tar")
            self._tar = AtomicTar(os.path.join(self.out_dir, self.names[-1]))
        for name, data in members:
            self._tar.add(name, data)
        self.samples += 1
        self._in_shard += 1
        if self._in_shard >= self.per_shard:
            self._close()

    def _close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar, self._in_shard = None, 0

    def finish(self) -> list[str]:
        self._close()
        return self.names

    def abandon(self) -> None:
        """An error left this chunk unfinished: drop the shard being written (a re-run redoes the chunk)."""
        if self._tar is not None:
            self._tar.abandon()
            self._tar = None
