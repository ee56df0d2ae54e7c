"""The packed batch and token-budget packing (NaViT-style, no padding between samples)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class PackedText:
    """Cached text-encoder rows of a pack's samples (`sora preprocess`): sample b's caption is
    ctx[cu_seqlens[b]:cu_seqlens[b+1]], only its real rows (no padding)."""
    ctx: torch.Tensor            # [M, Dt]
    cu_seqlens: torch.Tensor     # [B+1] int32

    @classmethod
    def of(cls, rows: list[torch.Tensor]) -> "PackedText":
        """Pack per-sample rows [L_b, Dt] (float32)."""
        cu = torch.zeros(len(rows) + 1, dtype=torch.int32)
        cu[1:] = torch.tensor([r.shape[0] for r in rows], dtype=torch.int32).cumsum(0)
        return cls(torch.cat([r.float() for r in rows]), cu)

    def __len__(self) -> int:
        return self.cu_seqlens.numel() - 1

    def lengths(self) -> list[int]:
        return (self.cu_seqlens[1:] - self.cu_seqlens[:-1]).tolist()

    def select(self, samples: list[int]) -> "PackedText":
        """The rows of these samples, in this order (repeats allowed): one entry per segment."""
        cu = self.cu_seqlens.tolist()
        return PackedText.of([self.ctx[cu[b]:cu[b + 1]] for b in samples]).to(self.ctx.device, self.ctx.dtype)

    def to(self, device, dtype=None) -> "PackedText":
        return PackedText(self.ctx.to(device, dtype or self.ctx.dtype), self.cu_seqlens.to(device))


@dataclass
class PackedBatch:
    latents: torch.Tensor        # [N*P] clean latents: every sample's [C, T', H', W'] flattened, concatenated
    cu_seqlens: torch.Tensor     # [B+1] int32 prefix sums of token counts (sample b's latent starts at cu[b]*P)
    max_seqlen: int
    grid: torch.Tensor           # [B, 3] int32 token grid (T', H', W') per sample
    captions: list[str]
    keys: list[str] = field(default_factory=list)
    budget: int = 0              # token budget this pack was filled against
    text: PackedText | None = None   # the captions' cached encoder rows (latent shards), else None

    @property
    def num_tokens(self) -> int:
        return int(self.cu_seqlens[-1])

    @property
    def values_per_token(self) -> int:
        """P = C*pt*ph*pw: latent values per token."""
        return self.latents.numel() // max(1, self.num_tokens)

    @property
    def num_samples(self) -> int:
        return self.cu_seqlens.numel() - 1

    @property
    def efficiency(self) -> float:
        return self.num_tokens / self.budget if self.budget else 1.0

    def to(self, device, dtype=None) -> "PackedBatch":
        return PackedBatch(self.latents.to(device, dtype or self.latents.dtype), self.cu_seqlens.to(device),
                           self.max_seqlen, self.grid.to(device), self.captions, self.keys, self.budget,
                           self.text.to(device, dtype) if self.text is not None else None)


@dataclass
class PackItem:
    latent: torch.Tensor         # [C, T', H', W']
    grid: tuple[int, int, int]   # its token grid: (T', H', W') / patch
    caption: str
    key: str
    text: torch.Tensor | None = None   # [L, Dt] the caption's cached encoder rows

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]


def pack(items: list[PackItem], budget: int = 0) -> PackedBatch:
    if not items:
        raise ValueError("cannot pack an empty list of samples")
    lens = torch.tensor([it.num_tokens for it in items], dtype=torch.int32)
    cu = torch.zeros(len(items) + 1, dtype=torch.int32)
    cu[1:] = lens.cumsum(0)
    cached = [it.text is not None for it in items]
    if any(cached) and not all(cached):
        raise ValueError("every sample of a pack carries cached text features, or none does")
    return PackedBatch(latents=torch.cat([it.latent.reshape(-1) for it in items]), cu_seqlens=cu,
                       max_seqlen=int(lens.max()),
                       grid=torch.tensor([it.grid for it in items], dtype=torch.int32),
                       captions=[it.caption for it in items], keys=[it.key for it in items],
                       budget=budget or int(cu[-1]),
                       text=PackedText.of([it.text for it in items]) if all(cached) else None)


def take_first_fit_decreasing(buffer: list, budget: int) -> list:
    """Remove and return items that fill `budget` as fully as a greedy first-fit-decreasing can
    (largest first, each taken if it still fits).
    Items keep arriving, so the leftovers fill later packs; nothing is dropped or padded.
    Items only need `num_tokens` (the loader packs clips before encoding them)."""
    order = sorted(range(len(buffer)), key=lambda i: -buffer[i].num_tokens)
    chosen, room = [], budget
    for i in order:
        n = buffer[i].num_tokens
        if n <= room:
            chosen.append(i)
            room -= n
            if room == 0:
                break
    picked = [buffer[i] for i in sorted(chosen)]
    for i in sorted(chosen, reverse=True):
        buffer.pop(i)
    return picked
