"""The trained stage-2 model: text encoder (when trainable) + DiT, built from a Config. Its text
is captions (encoded here: the hash encoder, trained, or a frozen T5 / CLIP) or their cached rows
(PackedText from latent shards, when built with `text_dim`: then no encoder exists here)."""
from __future__ import annotations

import torch
import torch.nn as nn

from sora.data.packing import PackedText
from sora.models.dit import DiT
from sora.models.text import FrozenTextEncoder, HashTextEncoder, pad_context


def dit_of_config(cfg, text_dim: int, device: str = "cpu") -> DiT:
    """The DiT a run's Config describes, for captions of `text_dim` features: a diffusers Wan
    transformer with its weights (model.pretrained), else ours, freshly initialised."""
    from sora.config import ConfigError, resolved_dims

    if cfg.model.pretrained:
        from sora.models.dit_io import load_dit

        dit = load_dit(cfg.model.pretrained, device=str(device), backend=cfg.model.backend)
        wants = {"vae.latent_channels": (cfg.vae.latent_channels, dit.channels),
                 "text.path": (text_dim, dit.text_dim)}
        for key, (mine, theirs) in wants.items():
            if mine != theirs:
                raise ConfigError(f"config key '{key}' gives {mine} {'channels' if 'vae' in key else 'text features'}"
                                  f", but model.pretrained '{cfg.model.pretrained}' takes {theirs}")
        dit.checkpointing = cfg.model.checkpointing
        return dit.train()

    depth, width, heads = resolved_dims(cfg.model)
    return DiT(cfg.vae.latent_channels, tuple(cfg.model.patch), width, depth, heads, text_dim, cfg.model.mlp_ratio,
               cfg.model.qk_norm, cfg.model.rope_theta, cfg.model.checkpointing, cfg.model.backend, str(device))


class TextToVideo(nn.Module):
    def __init__(self, cfg, device: str = "cpu", text_dim: int | None = None, frozen_text=None):
        """`device`: where the model will run; it picks the kernel backends (`auto`). `text_dim`: the
        width of cached features (latent shards): no text encoder is built, forward takes PackedText.
        `frozen_text`: an already loaded FrozenTextEncoder to share (text.encoder != hash), instead of
        loading one."""
        super().__init__()
        pt, ph, pw = cfg.model.patch
        self.patch = (pt, ph, pw)
        self.latent_channels = cfg.vae.latent_channels
        self.context_rows = cfg.text.context_rows
        self.text, self._frozen_text = None, []   # a list hides the frozen encoder from nn.Module: not trained, sharded or saved
        if text_dim is not None:
            if cfg.text.encoder == "hash":
                raise ValueError("cached text features need a frozen encoder: the hash encoder trains with the DiT")
        elif cfg.text.encoder == "hash":
            self.text = HashTextEncoder(cfg.text.dim, cfg.text.layers, cfg.text.heads, cfg.text.vocab, cfg.text.max_tokens)
            text_dim = cfg.text.dim
        else:
            self._frozen_text = [frozen_text or FrozenTextEncoder(cfg.text.path, cfg.text.max_tokens)]
            text_dim = self._frozen_text[0].dim
        self.dit = dit_of_config(cfg, text_dim, device)

    def add_lora(self, lora) -> None:
        """Freeze everything (the text encoder too), then give the DiT's blocks trainable LoRA
        adapters (config section `lora`, sora/models/lora.py)."""
        from sora.models.lora import apply_lora

        self.requires_grad_(False)
        apply_lora(self.dit, lora)

    def encode_text(self, text: list[str] | PackedText, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions (encoded here) or their cached rows -> ctx [M, Dt], cu_seqlens_ctx [B+1] int32: what
        the DiT attends to (padded with zero rows to text.context_rows when set)."""
        if isinstance(text, PackedText):
            ctx, cu = text.ctx.to(device), text.cu_seqlens.to(device)
        elif self.text is not None:
            ids, cu = self.text.tokenizer(text)
            ids, cu = ids.to(device), cu.to(device)
            ctx = self.text(ids, cu, self.dit.kernels.attention)
        elif self._frozen_text:
            ctx, cu = self._frozen_text[0].encode(text)
            ctx, cu = ctx.to(device), cu.to(device)
        else:
            raise RuntimeError("this model was built for cached text features (no text encoder): pass PackedText")
        return pad_context(ctx, cu, self.context_rows) if self.context_rows else (ctx, cu)

    def text_lengths(self, text: list[str] | PackedText) -> list[int]:
        """Rows the DiT attends to per caption (the tokenizer alone, or the cached rows: for the cost model)."""
        if self.context_rows:
            return [self.context_rows] * len(text)
        if isinstance(text, PackedText):
            return text.lengths()
        if self.text is not None:
            _, cu = self.text.tokenizer(text)
            return (cu[1:] - cu[:-1]).tolist()
        if not self._frozen_text:
            raise RuntimeError("this model was built for cached text features (no text encoder): pass PackedText")
        return self._frozen_text[0].lengths(text)

    def layout(self, cu_seqlens: torch.Tensor, grid: torch.Tensor):
        """The PackedLayout of a pack of whole samples (token grids [B, 3]), on the model's kernels."""
        return self.dit.kernels.layout(cu_seqlens, grid)

    def forward(self, latents, layout, t, text: list[str] | PackedText, given=None):
        """latents [N*P] packed -> velocity [N*P]; text: one caption (or cached rows) per segment of `layout`."""
        ctx, cu_ctx = self.encode_text(text, latents.device)
        return self.dit(latents, layout, t, ctx.to(latents.dtype), cu_ctx, given)


def initial_model(cfg, device: str = "cpu", **kwargs) -> TextToVideo:
    """The model a run starts from, the same in every process that rebuilds it (every rank, a
    resume, `sora export` of a LoRA run, whose checkpoints hold only the adapters): the seed's
    init, with LoRA adapters injected and everything else frozen when lora.rank > 0. kwargs:
    TextToVideo's (text_dim for cached features, frozen_text)."""
    torch.manual_seed(cfg.run.seed)
    model = TextToVideo(cfg, device=device, **kwargs)
    if cfg.lora.rank:
        model.add_lora(cfg.lora)
    return model
