"""Shards -> prepared samples -> (latent) tokens -> token-budget packs, split by data-parallel rank.

All ranks of one sequence-parallel group use the same dp_rank, so they see identical packs.
"""
from __future__ import annotations

import itertools
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from sora.data.packing import PackedBatch, PackItem, pack, take_best_fit
from sora.data.pipeline import MAX_FPS_STRIDE, epoch_shard_order, mix_images, prepare_sample, shuffle_buffered
from sora.data.shards import SkipStats, iter_shard_samples

log = logging.getLogger("sora.data")


def shards_for_rank(paths: list[str], dp_rank: int, dp_size: int) -> list[str]:
    if len(paths) < dp_size:
        # Fewer shards than ranks: every rank reads all and keeps its own slice of samples.
        return list(paths)
    return paths[dp_rank::dp_size]


class VideoStream:
    """Infinite stream of (key, video [3, T, H, W] in [-1, 1], caption), reshuffled every epoch."""

    def __init__(self, paths: list[str], data_cfg, ft: int, fh: int, patch, dp_rank: int = 0, dp_size: int = 1,
                 seed: int = 0, stats: SkipStats | None = None, epochs: int | None = None):
        self.all_paths = sorted(paths)
        self.paths = shards_for_rank(self.all_paths, dp_rank, dp_size)
        self.slice_samples = len(self.all_paths) < dp_size
        self.cfg, self.ft, self.fh, self.patch = data_cfg, ft, fh, tuple(patch)
        self.dp_rank, self.dp_size, self.seed, self.epochs = dp_rank, dp_size, seed, epochs
        self.stats = stats if stats is not None else SkipStats()

    def _epoch(self, epoch: int) -> Iterator[tuple[str, torch.Tensor, str]]:
        order = epoch_shard_order(self.paths, self.seed, epoch, self.dp_rank, self.slice_samples)
        rng = np.random.default_rng([self.seed, self.dp_rank, epoch])   # this rank's shuffle buffer
        mix_rng = np.random.default_rng([self.seed, self.dp_rank, epoch, 1])   # image/video mixing
        # data.fps: decode enough frames that every clip still has max_frames after taking every k-th
        cap = 1 + (self.cfg.max_frames - 1) * (MAX_FPS_STRIDE if self.cfg.fps > 0 else 1)

        def prepared():
            for i, s in enumerate(iter_shard_samples(order, self.stats, max_frames=cap)):
                if self.slice_samples and i % self.dp_size != self.dp_rank:
                    continue
                out = prepare_sample(s.frames, s.fps, s.key, self.cfg, self.ft, self.fh, self.patch, self.stats)
                if out is not None:
                    yield s.key, out[0], s.caption

        mixed = mix_images(prepared(), self.cfg.image_ratio, mix_rng, lambda it: it[1].shape[1] == 1)
        yield from shuffle_buffered(mixed, rng, self.cfg.shuffle_buffer)

    def __iter__(self):
        for epoch in (range(self.epochs) if self.epochs is not None else itertools.count()):
            produced = False
            for item in self._epoch(epoch):
                produced = True
                yield item
            if not produced:
                raise RuntimeError(f"no usable sample in shards {self.paths} (skips: {self.stats.as_dict()})")


@dataclass
class _Pending:
    """A clip waiting in the packing buffer: packed by its token count, encoded only once picked."""
    key: str
    video: torch.Tensor          # [3, T, H, W]
    caption: str                 # after caption dropout
    grid: tuple[int, int, int]

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]


class PackedLoader:
    """Packs clips into micro-batches of at most `tokens_per_batch` tokens, then encodes the picked
    clips (latents are cached: the pipeline is deterministic per sample).

    Resumable exactly: the only state is how many packs were taken, because the stream, its
    shuffles and the caption dropout are all seeded. `skip(n)` replays n packs without encoding
    (`latent_shape` gives token counts from video shapes), so resuming costs video decoding only.
    """

    def __init__(self, videos: VideoStream, encode: Callable[[torch.Tensor], torch.Tensor], patch,
                 tokens_per_batch: int, caption_dropout: float = 0.0, seed: int = 0, lookahead: int = 32,
                 latent_shape: Callable[[int, int, int], tuple] | None = None, cache_items: int = 1024):
        self.videos, self.encode, self.patch = videos, encode, tuple(patch)
        self.budget, self.dropout, self.lookahead = tokens_per_batch, caption_dropout, lookahead
        self.latent_shape = latent_shape
        self.rng = np.random.default_rng([seed, videos.dp_rank, 7])
        # Least-recently-used latents, bounded: a small dataset is encoded once, a large one does
        # not grow memory without end (use `sora preprocess` there). Encoding is deterministic, so
        # what is evicted and encoded again is identical.
        self.cache: OrderedDict[str, tuple[torch.Tensor, tuple]] = OrderedDict()
        self.cache_items = cache_items
        self.buffer: list[_Pending] = []
        self.stream = iter(self.videos)
        self.exhausted = False
        self.packs_taken = 0

    def _token_grid(self, latent_shape) -> tuple[int, int, int]:
        return tuple(s // p for s, p in zip(latent_shape[1:], self.patch))   # (C, T', H', W') -> tokens

    def _latent(self, key: str, video: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        if key in self.cache:
            self.cache.move_to_end(key)
        else:
            latent = self.encode(video)                                  # [C, T', H', W']
            self.cache[key] = (latent, self._token_grid(latent.shape))
            if len(self.cache) > self.cache_items:
                self.cache.popitem(last=False)
        return self.cache[key]

    def _grid(self, key: str, video: torch.Tensor) -> tuple[int, int, int]:
        if key in self.cache:
            return self.cache[key][1]
        if self.latent_shape is None:
            return self._latent(key, video)[1]
        return self._token_grid(self.latent_shape(*video.shape[1:]))

    def _fill(self) -> None:
        while not self.exhausted and len(self.buffer) < self.lookahead:
            try:
                key, video, caption = next(self.stream)
            except StopIteration:  # finite epochs: drain what is left
                self.exhausted = True
                break
            if self.dropout and self.rng.random() < self.dropout:
                caption = ""
            self.buffer.append(_Pending(key, video, caption, self._grid(key, video)))

    def _take(self) -> list[_Pending]:
        self._fill()
        if not self.buffer:
            raise StopIteration
        picked = take_best_fit(self.buffer, self.budget)
        if not picked:
            raise RuntimeError(f"no sample fits the token budget {self.budget}")
        self.packs_taken += 1
        return picked

    def skip(self, packs: int) -> None:
        """Advance by `packs` packs exactly as iterating would, without encoding anything."""
        for _ in range(packs):
            self._take()

    def __iter__(self) -> "PackedLoader":
        return self

    def __next__(self) -> PackedBatch:
        items = []
        for p in self._take():
            latent, grid = self._latent(p.key, p.video)
            if grid != p.grid:
                raise RuntimeError(f"sample {p.key}: encoded to a {grid} token grid, packed as {p.grid} "
                                   "(latent_shape disagrees with the encoder)")
            items.append(PackItem(latent, grid, p.caption, p.key))
        return pack(items, self.budget)
