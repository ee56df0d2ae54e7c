"""Pretrained weights from local directories, never downloaded.

- Causal video VAEs in diffusers format (`config.json` + safetensors, as published for Wan 2.1/2.2,
  CogVideoX and HunyuanVideo), through diffusers as an optional dependency (`pip install 'sora[diffusers]'`).
  `DiffusersVAE` gives them our VAE's interface (ft, fh, latent_channels, encode -> the normalised
  latent the DiT sees, decode), so `sora preprocess` can use them in place of a stage-1 run.
- Text encoders through transformers: T5 / mT5 / umT5 encoders and CLIP text models, picked by
  the directory's `config.json` `model_type`.

Every load passes local_files_only=True and refuses a path that is not a directory, so a typo never
turns into a hub download; weights load from safetensors (diffusers / transformers default).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from sora.shapes import ShapeRules

# family -> (how to read ft, fh, latent channels from the config; how latents are normalised)
VAE_FAMILIES = ("AutoencoderKLWan", "AutoencoderKLCogVideoX", "AutoencoderKLHunyuanVideo")


def _local_dir(path: str | Path, what: str) -> Path:
    p = Path(path)
    if not p.is_dir() or not (p / "config.json").is_file():
        raise FileNotFoundError(f"{what}: '{path}' is not a local directory with a config.json (nothing is downloaded)")
    return p


def _config(path: Path) -> dict:
    return json.loads((path / "config.json").read_text())


class DiffusersVAE(nn.Module):
    """A diffusers causal video VAE behind our VAE's interface. Latents are normalised the way the
    family's own pipelines do it: Wan `(z - latents_mean) / latents_std` per channel; CogVideoX and
    HunyuanVideo `(z - shift_factor) * scaling_factor`."""

    def __init__(self, path: str | Path, dtype: torch.dtype = torch.float32):
        super().__init__()
        p = _local_dir(path, "vae.pretrained")
        cfg = _config(p)
        family = cfg.get("_class_name", "")
        if family not in VAE_FAMILIES:
            raise ValueError(f"vae.pretrained '{path}': unsupported VAE class {family!r}; known: {', '.join(VAE_FAMILIES)}")
        try:
            import diffusers
        except ImportError as e:
            raise ImportError("vae.pretrained needs the optional 'diffusers' package (pip install 'sora[diffusers]')") from e
        self.family = family
        self.model = getattr(diffusers, family).from_pretrained(str(p), local_files_only=True, torch_dtype=dtype)
        self.model.eval().requires_grad_(False)
        c = self.model.config
        if family == "AutoencoderKLWan":
            # From the architecture, not scale_factor_* (those keep their defaults in small configs).
            # Wan 2.1: 4 x 8 x 8, 16 channels. Wan 2.2: pixels patchified 2 x 2 first, then 4 x 8 x 8
            # -> 4 x 16 x 16, 48 channels.
            self.ft = 2 ** sum(bool(d) for d in c.temperal_downsample)
            self.fh = 2 ** (len(c.dim_mult) - 1) * (c.patch_size or 1)
            self.latent_channels = c.z_dim
            if self.ft != 4:   # diffusers encodes frame 0, then chunks of exactly 4 frames
                raise ValueError(f"vae.pretrained '{path}': temperal_downsample {list(c.temperal_downsample)} "
                                 f"compresses time {self.ft}x, but diffusers' Wan VAE encodes 4 frames per latent frame")
            mean = torch.tensor(c.latents_mean, dtype=torch.float32)
            scale = 1.0 / torch.tensor(c.latents_std, dtype=torch.float32)
        else:
            self.ft = int(c.temporal_compression_ratio)
            self.fh = 2 ** (len(c.block_out_channels) - 1)
            self.latent_channels = c.latent_channels
            mean = torch.full((c.latent_channels,), float(getattr(c, "shift_factor", None) or 0.0))
            scale = torch.full((c.latent_channels,), float(c.scaling_factor))
        self.register_buffer("latent_mean", mean, persistent=False)
        self.register_buffer("latent_scale", scale, persistent=False)

    @property
    def rules(self) -> ShapeRules:
        """Which videos this VAE takes (sora/shapes.py)."""
        return ShapeRules(self.ft, self.fh)

    def check_video(self, x):
        problem = self.rules.problem(*x.shape[-3:])
        if problem:
            raise ValueError(f"video of {'x'.join(map(str, x.shape[-3:]))} frames x height x width: {problem}")

    def latent_shape(self, frames, height, width):
        return (self.latent_channels, *self.rules.latent_size(frames, height, width))

    def set_tiling(self, tile: int, overlap: int) -> None:
        """Use the library's own spatial tiling for frames larger than `tile` pixels (0: off)."""
        if tile:
            kw = {"tile_sample_min_height": tile, "tile_sample_min_width": tile,
                  "tile_sample_stride_height": tile - overlap, "tile_sample_stride_width": tile - overlap}
            self.model.enable_tiling(**kw)
        else:
            self.model.disable_tiling()

    @torch.no_grad()
    def encode(self, x, sample: bool = False):
        """x [B, 3, T, H, W] in [-1, 1] -> normalised latent [B, C, T', H', W'] (float32)."""
        self.check_video(x)
        dist = self.model.encode(x.to(self.model.dtype)).latent_dist
        z = (dist.sample() if sample else dist.mode()).float()
        return (z - self.latent_mean.view(-1, 1, 1, 1)) * self.latent_scale.view(-1, 1, 1, 1)

    @torch.no_grad()
    def decode(self, z):
        z = z.float() / self.latent_scale.view(-1, 1, 1, 1) + self.latent_mean.view(-1, 1, 1, 1)
        return self.model.decode(z.to(self.model.dtype)).sample.float()


# ---------------------------------------------------------------- text encoders

TEXT_FAMILIES = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel",
                 "clip": "CLIPTextModel", "clip_text_model": "CLIPTextModel"}


def text_model_info(path: str | Path) -> tuple[str, int]:
    """(model_type, feature width) of a local text encoder, from its config.json alone (no weights)."""
    cfg = _config(_local_dir(path, "text.path"))
    kind = cfg.get("model_type", "")
    cfg = cfg.get("text_config", cfg) if kind == "clip" else cfg   # a full CLIP config nests the text model's
    return kind, int(cfg.get("d_model") or cfg.get("hidden_size") or 0)


def _tokenizer_dir(path: Path) -> Path:
    """The encoder's own directory, or its sibling `tokenizer/` (a diffusers pipeline keeps them apart:
    text_encoder/ and tokenizer/)."""
    if any((path / f).is_file() for f in ("tokenizer_config.json", "tokenizer.json", "spiece.model")):
        return path
    sibling = path.parent / "tokenizer"
    return sibling if sibling.is_dir() else path


def load_text_model(path: str | Path):
    """(tokenizer, frozen encoder) from a local directory; the class follows config.json's model_type."""
    p = _local_dir(path, "text.path")
    kind = _config(p).get("model_type", "")
    if kind not in TEXT_FAMILIES:
        raise ValueError(f"text.path '{path}': unsupported model_type {kind!r}; known: {', '.join(TEXT_FAMILIES)}")
    try:
        import transformers
    except ImportError as e:  # optional dependency
        raise ImportError("a pretrained text encoder needs the optional 'transformers' package (pip install 'sora[t5]')") from e
    tok = transformers.AutoTokenizer.from_pretrained(str(_tokenizer_dir(p)), local_files_only=True)
    model = getattr(transformers, TEXT_FAMILIES[kind]).from_pretrained(str(p), local_files_only=True)
    return tok, model.eval().requires_grad_(False)


class PretrainedTextEncoder(nn.Module):
    """Frozen T5 / mT5 / umT5 / CLIP text encoder -> packed features (ctx [M, Dt], cu_seqlens [B+1])."""

    def __init__(self, path: str | Path, max_tokens: int = 128):
        super().__init__()
        self.tok, self.model = load_text_model(path)
        cfg = self.model.config
        self.dim = getattr(cfg, "d_model", None) or cfg.hidden_size
        limit = getattr(cfg, "max_position_embeddings", None)   # CLIP: 77 positions
        self.max_tokens = min(max_tokens, limit) if limit else max_tokens

    def tokenizer(self, captions: list[str]):
        enc = self.tok(captions, max_length=self.max_tokens, truncation=True, padding=True, return_tensors="pt")
        return enc.input_ids, enc.attention_mask

    @staticmethod
    def _lengths(mask: torch.Tensor) -> torch.Tensor:
        return mask.sum(1).clamp(min=1)          # [B]; an empty caption still yields one token

    def lengths(self, captions: list[str]) -> list[int]:
        """Tokens `encode` makes of each caption."""
        return self._lengths(self.tokenizer(captions)[1]).tolist()

    @torch.no_grad()
    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.tokenizer(captions)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state   # [B, L, Dt]
        lens = self._lengths(mask)
        ctx = torch.cat([hidden[b, : lens[b]] for b in range(len(captions))])       # [M, Dt]
        cu = F.pad(lens.cumsum(0), (1, 0)).to(torch.int32)
        return ctx, cu
