"""Text encoders. Both map captions to packed token features: ctx [M, Dt] + cu_seqlens_ctx [B+1].

- HashTextEncoder: words hashed into a fixed vocabulary, a small transformer trained with the DiT.
  Works offline on a fresh machine (no weights to fetch) and is the demo default.
- FrozenTextEncoder: a frozen T5 / mT5 / umT5 / CLIP text encoder loaded with transformers from a local directory (real use).
Every caption yields at least one token (a BOS), so the empty caption (CFG's unconditional
branch) is a real, learnable sequence rather than an empty attention set.
"""
from __future__ import annotations

import re
import zlib

import torch
import torch.nn as nn

from sora.models.pretrained import PretrainedTextEncoder

_WORD = re.compile(r"[a-z0-9]+")


class HashTokenizer:
    BOS = 0

    def __init__(self, vocab: int, max_tokens: int):
        self.vocab, self.max_tokens = vocab, max_tokens

    def word_id(self, word: str) -> int:
        # crc32 is stable across processes (Python's hash() is salted per process).
        return 1 + zlib.crc32(word.encode("utf-8")) % (self.vocab - 1)

    def __call__(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> ids [M] int64, cu_seqlens [B+1] int32."""
        ids, lens = [], []
        for text in captions:
            words = _WORD.findall(text.lower())[: self.max_tokens - 1]
            seq = [self.BOS] + [self.word_id(w) for w in words]
            ids.extend(seq)
            lens.append(len(seq))
        cu = torch.zeros(len(lens) + 1, dtype=torch.int32)
        cu[1:] = torch.tensor(lens, dtype=torch.int32).cumsum(0)
        return torch.tensor(ids, dtype=torch.long), cu


def pad_context(ctx: torch.Tensor, cu: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ctx [M, Dt] packed by cu [B+1] -> [B*rows, Dt]: each caption's rows, then zero rows up to
    `rows` (what Wan's pipeline feeds its DiT: the encoder output padded to 512 with zeros)."""
    lens = (cu[1:] - cu[:-1]).long()                                            # [B]
    if int(lens.max()) > rows:
        raise ValueError(f"a caption of {int(lens.max())} rows does not fit text.context_rows={rows}")
    starts = torch.repeat_interleave(cu[:-1].long(), lens, output_size=ctx.shape[0])
    sample = torch.repeat_interleave(torch.arange(len(lens), device=ctx.device), lens, output_size=ctx.shape[0])
    dest = sample * rows + torch.arange(ctx.shape[0], device=ctx.device) - starts    # [M] row in the output
    out = ctx.new_zeros(len(lens) * rows, ctx.shape[1]).index_copy(0, dest, ctx)
    return out, torch.arange(len(lens) + 1, device=cu.device, dtype=torch.int32) * rows


class _TextBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"), nn.Linear(4 * dim, dim))

    def forward(self, x, cu, max_len: int, attention):
        n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(n, 3, self.heads, d // self.heads).unbind(1)  # [M, H, Dh] each
        x = x + self.proj(attention(q, k, v, cu, cu, max_len, max_len).reshape(n, d))
        return x + self.mlp(self.norm2(x))


class HashTextEncoder(nn.Module):
    def __init__(self, dim: int = 128, layers: int = 2, heads: int = 4, vocab: int = 4096, max_tokens: int = 32):
        super().__init__()
        self.tokenizer = HashTokenizer(vocab, max_tokens)
        self.dim = dim
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(max_tokens, dim)
        self.blocks = nn.ModuleList(_TextBlock(dim, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)

    def forward(self, ids: torch.Tensor, cu: torch.Tensor, attention) -> torch.Tensor:
        """ids [M], cu [B+1] -> ctx [M, dim]."""
        lens = (cu[1:] - cu[:-1]).long()
        starts = torch.repeat_interleave(cu[:-1].long(), lens, output_size=ids.numel())
        pos = torch.arange(ids.numel(), device=ids.device) - starts
        x = self.embed(ids) + self.pos(pos)
        max_len = int(lens.max())   # flash-attn's convention: the kernels take it, not derive it
        for blk in self.blocks:
            x = blk(x, cu, max_len, attention)
        return self.norm(x)


class FrozenTextEncoder(PretrainedTextEncoder):
    """Frozen T5 / mT5 / umT5 / CLIP text encoder from a local directory (no downloads); the class
    follows the directory's config.json (`sora/models/pretrained.py`). Needs `transformers`."""
