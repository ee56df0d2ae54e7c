"""The sample stream of both shard formats: raw video (sora/data/pipeline.py, VideoStream) and
latents (sora/data/latent_shards.py, LatentStream) differ only in how one sample is decoded.

Each epoch, for one data-parallel rank:
1. shard order: this rank's shards in a seeded per-epoch order (`epoch_shard_order`);
2. rank split: shards r::dp, or, with fewer shards than ranks, every rank reads all of them and
   keeps every dp-th sample (counted over shard members, before decoding);
3. decode: the subclass turns a sample's members into a tensor, or skips and counts it;
4. shuffle: a bounded buffer (`data.shuffle_buffer`);
5. image mixing: images and videos re-ordered to `data.image_ratio` (last, so the ratio holds
   for what the packer sees).
Every step is seeded by (run.seed, dp rank, epoch): the stream is deterministic, and resuming
replays it (sora/data/loader.py). All ranks of one sequence-parallel group pass the same dp rank,
so they see identical samples.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from sora.data.shards import Group, SkipStats, iter_groups, read_header
from sora.shapes import ShapeRules


@dataclass
class Decoded:
    key: str
    data: torch.Tensor           # [3, T, H, W] video in [-1, 1], or [C, T', H', W'] latent
    caption: str
    fps: float                   # frames per second of `data`
    text: torch.Tensor | None = None   # [L, Dt] the caption's cached encoder rows (latent shards), else None


class SampleStream:
    """Infinite (or `epochs`-long) stream of Decoded samples, reshuffled every epoch."""

    def __init__(self, paths: list[str], data_cfg, rules: ShapeRules, dp_rank: int = 0, dp_size: int = 1,
                 seed: int = 0, stats: SkipStats | None = None, epochs: int | None = None):
        self.all_paths = sorted(paths)
        self.shared = len(self.all_paths) < dp_size      # every rank reads every shard, keeps its slice
        self.paths = list(self.all_paths) if self.shared else self.all_paths[dp_rank::dp_size]
        self.cfg, self.rules = data_cfg, rules
        self.dp_rank, self.dp_size, self.seed, self.epochs = dp_rank, dp_size, seed, epochs
        self.stats = stats if stats is not None else SkipStats()

    def decode(self, group: Group, caption: str, fps: float) -> Decoded | None:
        """One sample from its shard members (header already checked), or None after counting why."""
        raise NotImplementedError

    def samples(self, paths: list[str] | None = None, part: tuple[int, int] = (0, 1)) -> Iterator[Decoded]:
        """Decoded samples of `paths` (default: every shard, sorted) in order, once; part (i, n): only
        the i-th of every n shard members."""
        paths, (i, n) = self.all_paths if paths is None else paths, part
        for index, group in enumerate(g for path in paths for g in iter_groups(path, self.stats)):
            if index % n != i:
                continue
            header = read_header(group, self.stats)
            sample = self.decode(group, *header) if header is not None else None
            if sample is not None:
                yield sample

    def _epoch(self, epoch: int) -> Iterator[Decoded]:
        order = epoch_shard_order(self.paths, self.seed, epoch, self.dp_rank, self.shared)
        part = (self.dp_rank, self.dp_size) if self.shared else (0, 1)
        shuffled = shuffle_buffered(self.samples(order, part), np.random.default_rng([self.seed, self.dp_rank, epoch]),
                                    self.cfg.shuffle_buffer)
        yield from mix_images(shuffled, self.cfg.image_ratio, np.random.default_rng([self.seed, self.dp_rank, epoch, 1]),
                              lambda s: s.data.shape[1] == 1)

    def __iter__(self) -> Iterator[Decoded]:
        for epoch in (range(self.epochs) if self.epochs is not None else itertools.count()):
            produced = False
            for item in self._epoch(epoch):
                produced = True
                yield item
            if not produced:
                raise RuntimeError(f"no usable sample in shards {self.paths} (skips: {self.stats.as_dict()})")


def epoch_shard_order(paths: list[str], seed: int, epoch: int, dp_rank: int, shared: bool) -> list[str]:
    """This epoch's shard order; ranks that slice one shared sample sequence (`shared`) must agree on it."""
    rng = np.random.default_rng([seed, epoch, 0 if shared else dp_rank + 1])
    return [paths[i] for i in rng.permutation(len(paths))]


def shuffle_buffered(items, rng: np.random.Generator, size: int):
    """Stream shuffle: hold `size` items, emit a random one per arrival, then the rest shuffled."""
    buffer = []
    for item in items:
        buffer.append(item)
        if len(buffer) >= size:
            yield buffer.pop(int(rng.integers(len(buffer))))
    rng.shuffle(buffer)
    yield from buffer


def mix_images(items, image_ratio: float, rng: np.random.Generator, is_image, max_wait: int = 256):
    """Re-order a stream so that about `image_ratio` of what comes out are images (is_image(item)).

    Items wait in two queues; each output draws the kind by the ratio and takes the other kind when
    that queue is empty. Nothing is dropped, and a queue never holds more than `max_wait` items
    (then it is drained first), so a stream with too few of one kind keeps flowing."""
    if image_ratio < 0:
        yield from items
        return
    queues: tuple[list, list] = ([], [])            # videos, images
    it = iter(items)
    done = False
    while True:
        while not done and (not queues[0] or not queues[1]):
            try:
                item = next(it)
            except StopIteration:
                done = True
                break
            queues[bool(is_image(item))].append(item)
            if len(queues[0]) > max_wait or len(queues[1]) > max_wait:
                break
        if not queues[0] and not queues[1]:
            return
        full = [q for q in queues if len(q) > max_wait]
        if full:
            q = full[0]
        else:
            want = int(rng.random() < image_ratio)
            q = queues[want] if queues[want] else queues[1 - want]
        yield q.pop(0)
