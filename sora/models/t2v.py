"""The trained stage-2 model: text encoder (when trainable) + DiT, built from a Config."""
from __future__ import annotations

import torch
import torch.nn as nn

from sora.models.dit import DiT
from sora.models.text import HashTextEncoder, T5TextEncoder


class TextToVideo(nn.Module):
    def __init__(self, cfg, device: str = "cpu"):
        """`device`: where the model will run; it picks the kernel backends (`auto`)."""
        super().__init__()
        from sora.config import resolved_dims

        depth, width, heads = resolved_dims(cfg.model)
        pt, ph, pw = cfg.model.patch
        self.patch = (pt, ph, pw)
        self.latent_channels = cfg.vae.latent_channels
        if cfg.text.encoder == "hash":
            self.text = HashTextEncoder(cfg.text.dim, cfg.text.layers, cfg.text.heads, cfg.text.vocab, cfg.text.max_tokens)
            text_dim = cfg.text.dim
        else:
            frozen = T5TextEncoder(cfg.text.path, cfg.text.max_tokens)
            self._frozen_text = [frozen]  # a list hides it from nn.Module: not trained, not sharded, not saved
            self.text = None
            text_dim = frozen.dim
        self.dit = DiT(self.latent_channels * pt * ph * pw, width, depth, heads, text_dim,
                       cfg.model.mlp_ratio, cfg.model.qk_norm, cfg.model.rope_theta,
                       cfg.model.checkpointing, cfg.model.backend, str(device))

    def encode_text(self, captions: list[str], device) -> tuple[torch.Tensor, torch.Tensor, int]:
        """-> ctx [M, Dt], cu_seqlens_ctx [B+1] int32, the longest caption's tokens (read from the
        host-side cu_seqlens: no device sync)."""
        if self.text is not None:
            ids, cu = self.text.tokenizer(captions)
            max_len = int((cu[1:] - cu[:-1]).max())
            ids, cu = ids.to(device), cu.to(device)
            return self.text(ids, cu, max_len, self.dit.kernels.attention), cu, max_len
        ctx, cu = self._frozen_text[0].encode(captions)
        return ctx.to(device), cu.to(device), int((cu[1:] - cu[:-1]).max())

    def forward(self, x, cu_seqlens, max_seqlen, grid, t, captions: list[str], token_offset=None, given=None):
        ctx, cu_ctx, max_ctx = self.encode_text(captions, x.device)
        return self.dit(x, cu_seqlens, max_seqlen, grid, t, ctx.to(x.dtype), cu_ctx, max_ctx, token_offset, given)
