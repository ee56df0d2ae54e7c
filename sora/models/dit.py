"""Diffusion transformer over packed spacetime patches.

Read top to bottom: size registry -> attention layers -> block -> final layer -> DiT.
The DiT takes packed latents (every sample's [C, T, H, W] flattened and concatenated) and returns
the velocity in the same layout: spacetime patches exist only inside it, between the fused patch
embedding and the fused unpatchify. Every sample keeps its own length and (t, h, w) grid (the
`PackedLayout`); self-attention is block-diagonal per sample (varlen), cross-attention pairs each
sample with its own caption tokens.
Conditioning is adaLN-single (PixArt-alpha): one timestep(+pooled text) MLP shared by all blocks,
plus a learned per-block table; gates start at zero so each block starts as the identity.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from sora.models.embeddings import RMSNorm, TimestepEmbedder, timestep_features
from sora.ops import Kernels, PackedLayout, select_kernels
from sora.ops.packing_index import sample_index
from sora.ops.rope import rope_sections

FRAME_DIM = 64                             # sinusoidal features of each token's latent frame index

# width = hidden size; params ~ 16 * width^2 * depth (self-attn, cross-attn, MLP)
DIT_SIZES = {
    "DiT-T": dict(depth=6, width=192, heads=6),        # CPU demo, ~4M
    "DiT-S": dict(depth=12, width=384, heads=6),       # ~30M
    "DiT-B": dict(depth=12, width=768, heads=12),      # ~120M
    "DiT-L": dict(depth=24, width=1024, heads=16),     # ~420M
    "DiT-XL": dict(depth=28, width=1152, heads=16),    # ~620M
    "DiT-1B": dict(depth=28, width=1536, heads=12),    # ~1.1B
    "DiT-3B": dict(depth=28, width=2560, heads=20),    # ~3B
}


def segment_mean(x: torch.Tensor, cu: torch.Tensor) -> torch.Tensor:
    """x [M, D] packed by cu [B+1] -> per-sample mean [B, D]."""
    sid = sample_index(cu, x.shape[0])
    lens = (cu[1:] - cu[:-1]).clamp(min=1).to(x.dtype)
    out = torch.zeros(cu.numel() - 1, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, sid, x)
    return out / lens[:, None]


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, qk_norm: bool, rope_theta: float):
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.q_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.sections = rope_sections(self.head_dim)
        self.rope_theta = rope_theta

    def forward(self, x, layout: PackedLayout, kernels: Kernels):
        n = x.shape[0]
        q, k, v = self.qkv(x).view(n, 3, self.heads, self.head_dim).unbind(1)   # [N, H, Dh] each
        q, k = self.q_norm(q), self.k_norm(k)
        o = kernels.self_attention(q, k, v, layout, self.sections, self.rope_theta)  # [N, H, Dh]
        return self.proj(o.reshape(n, -1))


class CrossAttention(nn.Module):
    def __init__(self, width: int, text_dim: int, heads: int, qk_norm: bool):
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(text_dim, 2 * width)
        self.proj = nn.Linear(width, width)
        self.q_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()

    def forward(self, x, layout: PackedLayout, ctx, cu_ctx, max_ctx, kernels: Kernels):
        n, m = x.shape[0], ctx.shape[0]
        q = self.q_norm(self.q(x).view(n, self.heads, self.head_dim))            # [N, H, Dh]
        k, v = self.kv(ctx).view(m, 2, self.heads, self.head_dim).unbind(1)      # [M, H, Dh]
        o = kernels.attention(q, self.k_norm(k), v, layout.cu_seqlens, cu_ctx, layout.max_seqlen, max_ctx)
        return self.proj(o.reshape(n, -1))


class DiTBlock(nn.Module):
    def __init__(self, width, heads, text_dim, mlp_ratio, qk_norm, rope_theta):
        super().__init__()
        self.attn = SelfAttention(width, heads, qk_norm, rope_theta)
        self.cross_norm = nn.LayerNorm(width, eps=1e-6)
        self.cross = CrossAttention(width, text_dim, heads, qk_norm)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        # adaLN-single table: rows = shift/scale/gate for attention, then for the MLP.
        table = torch.randn(6, width) / width ** 0.5
        table[2].zero_()
        table[5].zero_()
        self.ada_table = nn.Parameter(table)

    def forward(self, x, cond, layout: PackedLayout, ctx, cu_ctx, max_ctx, kernels: Kernels):
        # cond [S, 6, W] per segment from the shared timestep MLP; per-token lookup in the adaLN op.
        mod = cond + self.ada_table[None]
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.unbind(1)             # [S, W] each
        sid = layout.sample_index                                                # [N]
        h = kernels.adaln(x, shift1, scale1, layout)
        x = x + gate1[sid] * self.attn(h, layout, kernels)
        x = x + self.cross(self.cross_norm(x), layout, ctx, cu_ctx, max_ctx, kernels)
        h = kernels.adaln(x, shift2, scale2, layout)
        return x + gate2[sid] * self.mlp(h)


class FinalLayer(nn.Module):
    """adaLN, then the linear back to patch values fused with the unpatchify into packed latents."""

    def __init__(self, width: int, patch, channels: int):
        super().__init__()
        self.patch, self.channels = tuple(patch), channels
        self.ada_table = nn.Parameter(torch.randn(2, width) / width ** 0.5)
        self.linear = nn.Linear(width, channels * patch[0] * patch[1] * patch[2])
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x, cond, layout: PackedLayout, num_latent: int, kernels: Kernels):
        shift, scale = (cond[:, None] + self.ada_table[None]).unbind(1)         # [S, W] each
        h = kernels.adaln(x, shift, scale, layout)                               # [N, W]
        return kernels.patch_unembed(h, layout, self.patch, self.channels, self.linear.weight, self.linear.bias,
                                     num_latent)                                 # [N*P]


class DiT(nn.Module):
    def __init__(self, channels: int, patch, width: int, depth: int, heads: int, text_dim: int,
                 mlp_ratio: float = 4.0, qk_norm: bool = True, rope_theta: float = 10000.0,
                 checkpointing: bool = False, backend: str | None = None, device: str = "cpu"):
        super().__init__()
        self.channels, self.patch = channels, tuple(patch)
        self.in_dim = channels * self.patch[0] * self.patch[1] * self.patch[2]   # values per patch
        self.width = width
        self.checkpointing = checkpointing
        self.kernels = select_kernels(configured=backend, device=device)         # chosen once, stored
        self.patch_embed = nn.Linear(self.in_dim, width)       # its weights; the op fuses it with patchify
        # Absolute frame index (RoPE alone is relative): lets the model place a moving object per
        # frame from the very first, noisiest sampling steps, before any frame holds content.
        self.frame_embed = nn.Linear(FRAME_DIM, width)
        # Marks tokens given clean (image-to-video: the first frame is known and is not denoised).
        self.given_embed = nn.Parameter(torch.randn(width) / width ** 0.5)
        self.t_embed = TimestepEmbedder(width)
        self.text_pool = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, width))
        self.ada_single = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        self.blocks = nn.ModuleList(DiTBlock(width, heads, text_dim, mlp_ratio, qk_norm, rope_theta)
                                    for _ in range(depth))
        self.final = FinalLayer(width, self.patch, channels)
        nn.init.zeros_(self.ada_single[1].weight)   # gates start at zero: blocks start as identity
        nn.init.zeros_(self.ada_single[1].bias)

    def forward(self, latents, layout: PackedLayout, t, ctx, cu_seqlens_ctx, given=None):
        """latents [N*P] noisy packed latents -> velocity [N*P], the same layout.

        layout: the tokens this forward computes, with t [S] and the captions ctx [M, Dt] (packed by
        cu_seqlens_ctx [S+1]) per segment. A slice's layout (sequence parallelism) makes the output
        hold only its own tokens' values (zero elsewhere).
        given [L] bool (optional): tokens that are clean conditioning (x0 itself, e.g. a first
        frame), not noise at time t; their output is ignored.
        """
        s = layout.num_segments
        max_ctx = int((cu_seqlens_ctx[1:] - cu_seqlens_ctx[:-1]).max())
        c = self.t_embed(t) + self.text_pool(segment_mean(ctx, cu_seqlens_ctx))  # [S, W]
        cond = self.ada_single(c).view(s, 6, self.width)                         # [S, 6, W]
        frame = layout.positions[:, 0]                                           # [L] latent frame index
        h = self.kernels.patch_embed(latents, layout, self.patch, self.channels, self.patch_embed.weight,
                                     self.patch_embed.bias)                      # [L, W]
        h = h + self.frame_embed(timestep_features(frame / 1000.0, FRAME_DIM).to(h.dtype))
        if given is not None:   # the trainer always passes it (all False when no clip has a given frame)
            h = h + given[:, None].to(h.dtype) * self.given_embed
        args = (cond, layout, ctx, cu_seqlens_ctx, max_ctx, self.kernels)
        for blk in self.blocks:
            if self.checkpointing and self.training:
                h = checkpoint(blk, h, *args, use_reentrant=False)
            else:
                h = blk(h, *args)
        return self.final(h, F.silu(c), layout, latents.numel(), self.kernels)
