"""A sample stream (sora/data/stream.py) -> (latent) tokens -> token-budget packs.

All ranks of one sequence-parallel group use the same dp_rank, so they see identical packs.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from sora.data.packing import PackedBatch, PackItem, pack, take_first_fit_decreasing
from sora.data.stream import SampleStream
from sora.shapes import patch_grid


@dataclass
class _Pending:
    """A clip waiting in the packing buffer: packed by its token count, encoded only once picked."""
    key: str
    video: torch.Tensor          # [3, T, H, W]
    caption: str                 # after caption dropout
    grid: tuple[int, int, int]
    text: torch.Tensor | None    # [L, Dt] the caption's cached encoder rows (after caption dropout), or None

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]


class PackedLoader:
    """Packs clips into micro-batches of at most `tokens_per_batch` tokens, then encodes the picked
    clips (latents are cached: the pipeline is deterministic per sample).

    Resumable exactly: the only state is how many packs were taken, because the stream, its
    shuffles and the caption dropout are all seeded. `skip(n)` replays n packs without encoding
    (`latent_shape` gives token counts from video shapes), so resuming costs video decoding only.

    A stream that carries cached text features (latent shards) needs `empty_text` [L0, Dt], the
    empty caption's rows: caption dropout swaps them in, and the packs carry `PackedText`.
    """

    def __init__(self, videos: SampleStream, encode: Callable[[torch.Tensor], torch.Tensor], patch,
                 tokens_per_batch: int, caption_dropout: float = 0.0, seed: int = 0, lookahead: int = 32,
                 latent_shape: Callable[[int, int, int], tuple] | None = None, cache_items: int = 1024,
                 empty_text: torch.Tensor | None = None):
        self.videos, self.encode, self.patch = videos, encode, tuple(patch)
        self.budget, self.dropout, self.lookahead = tokens_per_batch, caption_dropout, lookahead
        self.latent_shape, self.empty_text = latent_shape, empty_text
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
        return patch_grid(*latent_shape[1:], self.patch)                     # (C, T', H', W') -> tokens

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
                s = next(self.stream)
            except StopIteration:  # finite epochs: drain what is left
                self.exhausted = True
                break
            caption, text = s.caption, s.text
            if self.dropout and self.rng.random() < self.dropout:
                caption, text = "", (None if text is None else self._empty_text())
            self.buffer.append(_Pending(s.key, s.data, caption, self._grid(s.key, s.data), text))

    def _empty_text(self) -> torch.Tensor:
        if self.empty_text is None:
            raise RuntimeError("the stream carries cached text features, but PackedLoader got no empty_text "
                               "for caption dropout")
        return self.empty_text

    def _take(self) -> list[_Pending]:
        self._fill()
        if not self.buffer:
            raise StopIteration
        picked = take_first_fit_decreasing(self.buffer, self.budget)
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
            items.append(PackItem(latent, grid, p.caption, p.key, p.text))
        return pack(items, self.budget)
