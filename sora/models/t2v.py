"""The trained stage-2 model: text encoder (when trainable) + DiT, built from a Config. Its text
is captions (encoded here: the hash encoder, trained, or a frozen T5 / CLIP) or their cached rows
(PackedText from latent shards, when built with `text_dim`: then no encoder exists here)."""
from __future__ import annotations

import logging

import torch
import torch.nn as nn

from sora.data.packing import PackedText
from sora.models.dit import DiT
from sora.models.text import FrozenTextEncoder, HashTextEncoder, pad_context

log = logging.getLogger("sora.models")


def dit_kwargs_of_config(cfg, text_dim: int) -> dict:
    """The architecture (DiT keyword arguments) a run's Config describes, for captions of `text_dim`
    features: model.pretrained's when set (its directory decides; config.validate checked that the
    config agrees), else the config's own dims."""
    if cfg.model.pretrained:
        from sora.models.dit_io import architecture
        return architecture(cfg.model.pretrained)[0]
    from sora.config import resolved_dims

    depth, width, heads = resolved_dims(cfg.model)
    return dict(channels=cfg.vae.latent_channels, patch=tuple(cfg.model.patch), width=width, depth=depth, heads=heads,
                text_dim=text_dim, mlp_ratio=cfg.model.mlp_ratio, qk_norm=cfg.model.qk_norm,
                rope_theta=cfg.model.rope_theta)


def dit_of_config(cfg, text_dim: int, device: str = "cpu") -> DiT:
    """The DiT a run's Config describes, randomly initialised (model.pretrained's weights are loaded
    by the trainer: `sora.models.dit_io.dit_weights`)."""
    from sora.models.dit_io import architecture, new_dit

    kwargs, wan_cfg = architecture(cfg.model.pretrained) if cfg.model.pretrained else (
        dit_kwargs_of_config(cfg, text_dim), None)
    if kwargs["text_dim"] != text_dim:
        raise ValueError(f"config key 'model.pretrained': its DiT reads text features of width {kwargs['text_dim']}, "
                         f"but the text encoder (text.path '{cfg.text.path}') gives {text_dim}")
    return new_dit(kwargs, wan_cfg, checkpointing=cfg.model.checkpointing, backend=cfg.model.backend,
                   device=str(device))


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


def initial_model(cfg, device: str = "cpu", load_pretrained: bool = True, **kwargs) -> TextToVideo:
    """The model a run starts from, the same in every process that rebuilds it (every rank, a
    resume, `sora export` of a LoRA run, whose checkpoints hold only the adapters): the seed's
    init, then model.pretrained's weights (unless `load_pretrained` is False: a resume whose
    checkpoint holds every weight), then LoRA adapters injected and everything else frozen when
    lora.rank > 0. kwargs: TextToVideo's (text_dim for cached features, frozen_text)."""
    torch.manual_seed(cfg.run.seed)
    model = TextToVideo(cfg, device=device, **kwargs)
    if cfg.model.pretrained and load_pretrained:
        _load_pretrained(model.dit, cfg.model.pretrained)
    if cfg.lora.rank:
        model.add_lora(cfg.lora)
    return model


def _load_pretrained(dit: DiT, path: str) -> None:
    """model.pretrained's weights into `dit` (built with its architecture), every tensor checked."""
    from sora.models.dit_io import dit_weights

    with torch.no_grad():
        missing, unexpected = dit.load_state_dict(dit_weights(path), strict=False)
    if missing or unexpected:
        raise ValueError(f"model.pretrained '{path}' does not fit the DiT: missing {missing[:5]}, unexpected {unexpected[:5]}")
    log.info("DiT weights from %s", path)
