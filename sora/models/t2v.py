"""The trained stage-2 model: text encoder (when trainable) + DiT, built from a Config."""
from __future__ import annotations

import torch
import torch.nn as nn

from sora.models.dit import DiT
from sora.models.text import HashTextEncoder, FrozenTextEncoder


def dit_of_config(cfg, text_dim: int, device: str = "cpu") -> DiT:
    """The DiT a run's Config describes, for captions of `text_dim` features."""
    from sora.config import resolved_dims

    depth, width, heads = resolved_dims(cfg.model)
    return DiT(cfg.vae.latent_channels, tuple(cfg.model.patch), width, depth, heads, text_dim, cfg.model.mlp_ratio,
               cfg.model.qk_norm, cfg.model.rope_theta, cfg.model.checkpointing, cfg.model.backend, str(device))


class TextToVideo(nn.Module):
    def __init__(self, cfg, device: str = "cpu"):
        """`device`: where the model will run; it picks the kernel backends (`auto`)."""
        super().__init__()
        pt, ph, pw = cfg.model.patch
        self.patch = (pt, ph, pw)
        self.latent_channels = cfg.vae.latent_channels
        if cfg.text.encoder == "hash":
            self.text = HashTextEncoder(cfg.text.dim, cfg.text.layers, cfg.text.heads, cfg.text.vocab, cfg.text.max_tokens)
            text_dim = cfg.text.dim
        else:
            frozen = FrozenTextEncoder(cfg.text.path, cfg.text.max_tokens)
            self._frozen_text = [frozen]  # a list hides it from nn.Module: not trained, not sharded, not saved
            self.text = None
            text_dim = frozen.dim
        self.dit = dit_of_config(cfg, text_dim, device)

    def add_lora(self, lora) -> None:
        """Freeze everything (the text encoder too), then give the DiT's blocks trainable LoRA
        adapters (config section `lora`, sora/models/lora.py)."""
        from sora.models.lora import apply_lora

        self.requires_grad_(False)
        apply_lora(self.dit, lora)

    def encode_text(self, captions: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
        """-> ctx [M, Dt], cu_seqlens_ctx [B+1] int32."""
        if self.text is not None:
            ids, cu = self.text.tokenizer(captions)
            ids, cu = ids.to(device), cu.to(device)
            return self.text(ids, cu, self.dit.kernels.attention), cu
        ctx, cu = self._frozen_text[0].encode(captions)
        return ctx.to(device), cu.to(device)

    def text_lengths(self, captions: list[str]) -> list[int]:
        """Tokens `encode_text` makes of each caption (the tokenizer alone: for the cost model)."""
        if self.text is not None:
            _, cu = self.text.tokenizer(captions)
            return (cu[1:] - cu[:-1]).tolist()
        return self._frozen_text[0].lengths(captions)

    def layout(self, cu_seqlens: torch.Tensor, grid: torch.Tensor):
        """The PackedLayout of a pack of whole samples (token grids [B, 3]), on the model's kernels."""
        return self.dit.kernels.layout(cu_seqlens, grid)

    def forward(self, latents, layout, t, captions: list[str], given=None):
        """latents [N*P] packed -> velocity [N*P]; captions: one per segment of `layout`."""
        ctx, cu_ctx = self.encode_text(captions, latents.device)
        return self.dit(latents, layout, t, ctx.to(latents.dtype), cu_ctx, given)


def initial_model(cfg, device: str = "cpu") -> TextToVideo:
    """The model a run starts from, the same in every process that rebuilds it (every rank, a
    resume, `sora export` of a LoRA run, whose checkpoints hold only the adapters): the seed's
    init, with LoRA adapters injected and everything else frozen when lora.rank > 0."""
    torch.manual_seed(cfg.run.seed)
    model = TextToVideo(cfg, device=device)
    if cfg.lora.rank:
        model.add_lora(cfg.lora)
    return model
