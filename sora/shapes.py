"""Shape rules: which (frames, height, width) a VAE and DiT can take, and how many tokens they make.

The causal VAE keeps frame 0 alone and folds each later group of `ft` frames into one latent frame
(frames = 1 + ft*k -> 1 + k latent frames); it divides height and width by `fh`. The DiT cuts the
latent into (pt, ph, pw) patches, one token each. So a shape is valid when
- frames = 1 + ft*k, k >= 0;
- its latent frames, 1 + k, are a multiple of pt: a 1-frame sample (an image) needs pt = 1;
- height and width are positive multiples of fh*ph and fh*pw.
Config validation, the data pipeline, the VAE and inference all ask these rules; the VAE alone
uses patch (1, 1, 1).
"""
from __future__ import annotations

import math
from dataclasses import dataclass


def patch_grid(latent_frames: int, latent_height: int, latent_width: int, patch) -> tuple[int, int, int]:
    """Token grid (T', H', W') of a latent, rounding each side down to whole patches."""
    pt, ph, pw = patch
    return latent_frames // pt, latent_height // ph, latent_width // pw


@dataclass(frozen=True)
class ShapeRules:
    ft: int                                  # VAE temporal factor
    fh: int                                  # VAE spatial factor (height and width)
    patch: tuple = (1, 1, 1)                 # DiT patch (pt, ph, pw)

    @classmethod
    def of(cls, cfg) -> "ShapeRules":
        """The rules of a config's VAE and DiT."""
        return cls(cfg.vae.ft, cfg.vae.fh, tuple(int(p) for p in cfg.model.patch))

    @property
    def side_unit(self) -> tuple[int, int]:
        """Pixels per token along height and width."""
        return self.fh * self.patch[1], self.fh * self.patch[2]

    def latent_frames(self, frames: int) -> int:
        return (frames - 1) // self.ft + 1

    def video_frames(self, latent_frames: int) -> int:
        return 1 + self.ft * (latent_frames - 1)

    def latent_size(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(T', H', W') of the VAE latent of a video."""
        return self.latent_frames(frames), height // self.fh, width // self.fh

    def grid(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """Token grid of a video (each side rounded down to whole tokens)."""
        return patch_grid(*self.latent_size(frames, height, width), self.patch)

    def tokens(self, frames: int, height: int, width: int) -> int:
        return math.prod(self.grid(frames, height, width))

    def frames_problem(self, frames: int) -> str | None:
        """Why a clip of `frames` frames cannot be encoded and patched, or None."""
        if frames < 1 or (frames - 1) % self.ft:
            return f"frames must be 1 + {self.ft}*k (vae.ft={self.ft}), got {frames}"
        if self.latent_frames(frames) % self.patch[0]:
            what = "an image (1 frame) makes no token" if frames == 1 else f"{frames} frames make no whole token"
            return (f"{what}: {self.latent_frames(frames)} latent frame(s) are not a multiple of the temporal "
                    f"patch {self.patch[0]}")
        return None

    def sides_problem(self, height: int, width: int) -> str | None:
        """Why a frame of height x width cannot be encoded and patched, or None."""
        uh, uw = self.side_unit
        if height <= 0 or width <= 0 or height % uh or width % uw:
            return f"height and width must be positive multiples of {uh}x{uw} (vae.fh x patch), got {height}x{width}"
        return None

    def problem(self, frames: int, height: int, width: int) -> str | None:
        """Why (frames, height, width) is not a valid shape, or None."""
        return self.frames_problem(frames) or self.sides_problem(height, width)

    def fit(self, frames: int, height: int, width: int, max_frames: int, max_tokens: int
            ) -> tuple[int, int, int] | None:
        """The valid (T, H, W) to train a clip of this size on, or None when it makes no token.

        Time is cut to at most max_frames, sides to whole tokens; above max_tokens space shrinks
        first (aspect kept), then time."""
        uh, uw = self.side_unit
        lt = self._whole_patches(self.latent_frames(min(frames, max_frames)))
        h, w = height // uh * uh, width // uw * uw
        if lt == 0 or h == 0 or w == 0:
            return None
        n = self.tokens(self.video_frames(lt), h, w)
        if n > max_tokens:
            s = math.sqrt(max_tokens / n)
            h, w = max(uh, int(h * s) // uh * uh), max(uw, int(w * s) // uw * uw)
            lt = self._cap_time(lt, (h // uh) * (w // uw), max_tokens)
            if lt == 0:
                return None
        return self.video_frames(lt), h, w

    def fit_latent(self, latent_frames: int, latent_height: int, latent_width: int, max_frames: int,
                   max_tokens: int) -> tuple[int, int, int] | None:
        """The (T', H', W') to cut a stored latent to (leading frames, centred crop), or None when it
        makes no token within max_tokens. A latent cannot be resized: only time is cut for the budget."""
        pt, ph, pw = self.patch
        h, w = latent_height - latent_height % ph, latent_width - latent_width % pw
        lt = self._whole_patches(min(latent_frames, self.latent_frames(max_frames)))
        lt = self._cap_time(lt, (h // ph) * (w // pw), max_tokens)
        return (lt, h, w) if lt and h and w else None

    def _whole_patches(self, latent_frames: int) -> int:
        return latent_frames - latent_frames % self.patch[0]

    def _cap_time(self, latent_frames: int, tokens_per_frame: int, max_tokens: int) -> int:
        """The most latent frames (whole temporal patches, at most `latent_frames`) within max_tokens."""
        if tokens_per_frame == 0:
            return 0
        return min(latent_frames // self.patch[0], max_tokens // tokens_per_frame) * self.patch[0]
