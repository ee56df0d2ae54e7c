"""Diffusion transformer over packed spacetime patches.

Read top to bottom: size registry -> attention layers -> block -> final layer -> DiT.
The DiT takes packed latents (every sample's [C, T, H, W] flattened and concatenated) and returns
the velocity in the same layout: spacetime patches exist only inside it, between the fused patch
embedding and the fused unpatchify. Every sample keeps its own length and (t, h, w) grid (the
`PackedLayout`); self-attention is block-diagonal per sample (varlen), cross-attention pairs each
sample with its own caption tokens.
Conditioning is adaLN-single (PixArt-alpha): one timestep(+pooled text) MLP shared by all blocks,
plus a learned per-block table; gates start at zero so each block starts as the identity.
`DiTArch` holds the switches that make the same DiT a Wan 2.1 / 2.2 transformer (sora/models/wan.py).
"""
from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class DiTArch:
    """Where a DiT departs from ours (the defaults); `sora.models.wan.wan_dit_kwargs` sets Wan's."""
    out_channels: int | None = None     # channels of the output latent (None: the input's)
    ffn_dim: int | None = None          # MLP hidden width (None: mlp_ratio * width)
    qk_norm_across_heads: bool = False  # q/k RMSNorm over all heads at once (Wan) instead of per head
    rope_sections: tuple | None = None  # (t, h, w) split of the head dim (None: rope_sections(head_dim))
    text_mlp: bool = False              # caption -> width once (Linear, GELU-tanh, Linear) before cross-attn
    pooled_text: bool = True            # the caption's mean joins the timestep conditioning
    frame_embed: bool = True            # absolute latent-frame-index embedding on every token
    final_silu: bool = True             # SiLU on the final layer's conditioning (Wan: none)
    cross_norm: bool = True             # affine LayerNorm before cross-attention
    t_freq_dim: int = 256               # sinusoidal timestep features
    # Tokens given clean (a first frame): "embed" adds a learned embedding (ours); "clean_time"
    # conditions them on time 0 instead (Wan 2.2 TI2V's per-token timestep).
    given: str = "embed"

    def __post_init__(self):
        if self.given not in ("embed", "clean_time"):
            raise ValueError(f"DiTArch.given must be 'embed' or 'clean_time', got {self.given!r}")


@dataclass(frozen=True)
class CondSegments:
    """Runs of tokens sharing one row of conditioning: what the adaLN op reads of a layout."""
    cu_seqlens: torch.Tensor            # [S'+1] int32
    sample_index: torch.Tensor          # [L] int64 run of each token


def clean_time_runs(layout: PackedLayout, t: torch.Tensor, given: torch.Tensor) -> tuple[CondSegments, torch.Tensor]:
    """Cut the layout's segments into runs of tokens with equal `given`; a given run's time is 0.
    t [S], given [L] bool -> (runs, t [S']). The modulation stays piecewise constant per run, so
    every adaLN backend serves a per-token timestep unchanged."""
    sid, n = layout.sample_index, given.shape[0]
    new = torch.ones_like(given)                                               # [L] a run starts here
    new[1:] = (sid[1:] != sid[:-1]) | (given[1:] != given[:-1])
    starts = new.nonzero().flatten()                                           # [S']
    cu = torch.cat([starts, starts.new_tensor([n])]).int()
    t_runs = torch.where(given[starts], torch.zeros_like(t[:1]), t[sid[starts]])
    return CondSegments(cu, new.long().cumsum(0) - 1), t_runs


class AcrossHeadsRMSNorm(nn.Module):
    """RMSNorm of [N, H, Dh] over all heads together (H * Dh), before the head split (Wan)."""

    def __init__(self, heads: int, head_dim: int, eps: float = 1e-6):
        super().__init__()
        self.norm = RMSNorm(heads * head_dim, eps)

    def forward(self, x):
        return self.norm(x.flatten(-2)).view(x.shape)


def qk_norm_layer(qk_norm: bool, arch: DiTArch, heads: int, head_dim: int) -> nn.Module:
    if not qk_norm:
        return nn.Identity()
    return AcrossHeadsRMSNorm(heads, head_dim) if arch.qk_norm_across_heads else RMSNorm(head_dim)


def segment_mean(x: torch.Tensor, cu: torch.Tensor) -> torch.Tensor:
    """x [M, D] packed by cu [B+1] -> per-sample mean [B, D]."""
    sid = sample_index(cu, x.shape[0])
    lens = (cu[1:] - cu[:-1]).clamp(min=1).to(x.dtype)
    out = torch.zeros(cu.numel() - 1, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, sid, x)
    return out / lens[:, None]


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, qk_norm: bool, rope_theta: float, arch: DiTArch):
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.q_norm = qk_norm_layer(qk_norm, arch, heads, self.head_dim)
        self.k_norm = qk_norm_layer(qk_norm, arch, heads, self.head_dim)
        self.sections = tuple(arch.rope_sections or rope_sections(self.head_dim))
        self.rope_theta = rope_theta

    def forward(self, x, layout: PackedLayout, kernels: Kernels):
        n = x.shape[0]
        q, k, v = self.qkv(x).view(n, 3, self.heads, self.head_dim).unbind(1)   # [N, H, Dh] each
        q, k = self.q_norm(q), self.k_norm(k)
        o = kernels.self_attention(q, k, v, layout, self.sections, self.rope_theta)  # [N, H, Dh]
        return self.proj(o.reshape(n, -1))


class CrossAttention(nn.Module):
    def __init__(self, width: int, ctx_dim: int, heads: int, qk_norm: bool, arch: DiTArch):
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(ctx_dim, 2 * width)
        self.proj = nn.Linear(width, width)
        self.q_norm = qk_norm_layer(qk_norm, arch, heads, self.head_dim)
        self.k_norm = qk_norm_layer(qk_norm, arch, heads, self.head_dim)

    def forward(self, x, layout: PackedLayout, ctx, cu_ctx, max_ctx, kernels: Kernels):
        n, m = x.shape[0], ctx.shape[0]
        q = self.q_norm(self.q(x).view(n, self.heads, self.head_dim))            # [N, H, Dh]
        k, v = self.kv(ctx).view(m, 2, self.heads, self.head_dim).unbind(1)      # [M, H, Dh]
        o = kernels.attention(q, self.k_norm(k), v, layout.cu_seqlens, cu_ctx, layout.max_seqlen, max_ctx)
        return self.proj(o.reshape(n, -1))


class DiTBlock(nn.Module):
    def __init__(self, width, heads, ctx_dim, mlp_ratio, qk_norm, rope_theta, arch: DiTArch):
        super().__init__()
        self.attn = SelfAttention(width, heads, qk_norm, rope_theta, arch)
        self.cross_norm = nn.LayerNorm(width, eps=1e-6) if arch.cross_norm else nn.Identity()
        self.cross = CrossAttention(width, ctx_dim, heads, qk_norm, arch)
        hidden = arch.ffn_dim or int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        # adaLN-single table: rows = shift/scale/gate for attention, then for the MLP.
        table = torch.randn(6, width) / width ** 0.5
        table[2].zero_()
        table[5].zero_()
        self.ada_table = nn.Parameter(table)

    def forward(self, x, cond, layout: PackedLayout, ctx, cu_ctx, max_ctx, kernels: Kernels, runs=None):
        # cond [S', 6, W] per conditioning segment (the CondSegments `runs`; the layout's own
        # segments when None) from the shared timestep MLP; per-token lookup in the adaLN op.
        mod_layout = layout if runs is None else runs
        mod = cond + self.ada_table[None]
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.unbind(1)             # [S', W] each
        sid = mod_layout.sample_index                                            # [N]
        h = kernels.adaln(x, shift1, scale1, mod_layout)
        x = x + gate1[sid] * self.attn(h, layout, kernels)
        x = x + self.cross(self.cross_norm(x), layout, ctx, cu_ctx, max_ctx, kernels)
        h = kernels.adaln(x, shift2, scale2, mod_layout)
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

    def forward(self, x, cond, layout: PackedLayout, num_latent: int, kernels: Kernels, runs=None):
        shift, scale = (cond[:, None] + self.ada_table[None]).unbind(1)         # [S', W] each
        h = kernels.adaln(x, shift, scale, layout if runs is None else runs)    # [N, W]
        return kernels.patch_unembed(h, layout, self.patch, self.channels, self.linear.weight, self.linear.bias,
                                     num_latent)                                 # [N*P]


class DiT(nn.Module):
    def __init__(self, channels: int, patch, width: int, depth: int, heads: int, text_dim: int,
                 mlp_ratio: float = 4.0, qk_norm: bool = True, rope_theta: float = 10000.0,
                 checkpointing: bool = False, backend: str | None = None, device: str = "cpu",
                 arch: DiTArch = DiTArch()):
        super().__init__()
        self.channels, self.patch, self.arch = channels, tuple(patch), arch
        self.out_channels = arch.out_channels or channels
        self.in_dim = channels * self.patch[0] * self.patch[1] * self.patch[2]   # values per patch
        self.width, self.text_dim = width, text_dim
        self.checkpointing = checkpointing
        self.kernels = select_kernels(configured=backend, device=device)         # chosen once, stored
        self.patch_embed = nn.Linear(self.in_dim, width)       # its weights; the op fuses it with patchify
        if arch.frame_embed:
            # Absolute frame index (RoPE alone is relative): lets the model place a moving object per
            # frame from the very first, noisiest sampling steps, before any frame holds content.
            self.frame_embed = nn.Linear(FRAME_DIM, width)
        if arch.given == "embed":
            # Marks tokens given clean (image-to-video: the first frame is known and is not denoised).
            self.given_embed = nn.Parameter(torch.randn(width) / width ** 0.5)
        self.t_embed = TimestepEmbedder(width, arch.t_freq_dim)
        if arch.pooled_text:
            self.text_pool = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, width))
        if arch.text_mlp:
            self.text_mlp = nn.Sequential(nn.Linear(text_dim, width), nn.GELU(approximate="tanh"), nn.Linear(width, width))
        self.ada_single = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        ctx_dim = width if arch.text_mlp else text_dim
        self.blocks = nn.ModuleList(DiTBlock(width, heads, ctx_dim, mlp_ratio, qk_norm, rope_theta, arch)
                                    for _ in range(depth))
        self.final = FinalLayer(width, self.patch, self.out_channels)
        nn.init.zeros_(self.ada_single[1].weight)   # gates start at zero: blocks start as identity
        nn.init.zeros_(self.ada_single[1].bias)

    def forward(self, latents, layout: PackedLayout, t, ctx, cu_seqlens_ctx, given=None):
        """latents [N*P] noisy packed latents -> velocity [N*P_out], the same layout (P_out: out_channels).

        layout: the tokens this forward computes, with t [S] and the captions ctx [M, Dt] (packed by
        cu_seqlens_ctx [S+1]) per segment. A slice's layout (sequence parallelism) makes the output
        hold only its own tokens' values (zero elsewhere).
        given [L] bool (optional): tokens that are clean conditioning (x0 itself, e.g. a first
        frame), not noise at time t; their output is ignored.
        """
        max_ctx = int((cu_seqlens_ctx[1:] - cu_seqlens_ctx[:-1]).max())
        runs = None                                    # conditioning segments: the layout's own
        if given is not None and self.arch.given == "clean_time" and bool(given.any()):
            runs, t = clean_time_runs(layout, t, given)                          # t [S']
        c = self.t_embed(t)                                                      # [S', W]
        if self.arch.pooled_text:
            c = c + self.text_pool(segment_mean(ctx, cu_seqlens_ctx))
        cond = self.ada_single(c).view(-1, 6, self.width)                        # [S', 6, W]
        if self.arch.text_mlp:
            ctx = self.text_mlp(ctx)                                             # [M, W]
        h = self.kernels.patch_embed(latents, layout, self.patch, self.channels, self.patch_embed.weight,
                                     self.patch_embed.bias)                      # [L, W]
        if self.arch.frame_embed:
            frame = layout.positions[:, 0]                                       # [L] latent frame index
            h = h + self.frame_embed(timestep_features(frame / 1000.0, FRAME_DIM).to(h.dtype))
        if given is not None and self.arch.given == "embed":   # the trainer always passes it (all False when none)
            h = h + given[:, None].to(h.dtype) * self.given_embed
        args = (cond, layout, ctx, cu_seqlens_ctx, max_ctx, self.kernels, runs)
        for blk in self.blocks:
            if self.checkpointing and self.training:
                h = checkpoint(blk, h, *args, use_reentrant=False)
            else:
                h = blk(h, *args)
        num_out = latents.numel() // self.channels * self.out_channels
        return self.final(h, F.silu(c) if self.arch.final_silu else c, layout, num_out, self.kernels, runs)

    def denoise(self, latents, sigmas, text, first_frame=None):
        """Per-sample latents [C, T, H, W], sigmas [B], text features [L_i, Dt] -> velocities
        [C_out, T, H, W]: one packed pass (sora/models/denoise.py)."""
        from sora.models.denoise import denoise   # packing helpers; dit.py stays the model alone
        return denoise(self, latents, sigmas, text, first_frame)
