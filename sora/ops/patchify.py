"""Spacetime patches: per-sample latent [C, T, H, W] <-> packed tokens [n, C*pt*ph*pw]."""
from __future__ import annotations

import torch


def patch_grid(latent_shape, patch) -> tuple[int, int, int]:
    _, t, h, w = latent_shape
    pt, ph, pw = patch
    if t % pt or h % ph or w % pw:
        raise ValueError(f"latent {tuple(latent_shape)} is not divisible by patch {tuple(patch)}")
    return t // pt, h // ph, w // pw


def patchify(latent: torch.Tensor, patch) -> torch.Tensor:
    """[C, T, H, W] -> [T'*H'*W', C*pt*ph*pw], tokens in (t, h, w) row-major order."""
    c = latent.shape[0]
    gt, gh, gw = patch_grid(latent.shape, patch)
    pt, ph, pw = patch
    x = latent.reshape(c, gt, pt, gh, ph, gw, pw)
    x = x.permute(1, 3, 5, 0, 2, 4, 6)                     # [gt, gh, gw, C, pt, ph, pw]
    return x.reshape(gt * gh * gw, c * pt * ph * pw)


def unpatchify(tokens: torch.Tensor, grid, patch, channels: int) -> torch.Tensor:
    """[T'*H'*W', C*pt*ph*pw] -> [C, T, H, W]."""
    gt, gh, gw = (int(g) for g in grid)
    pt, ph, pw = patch
    if tokens.shape != (gt * gh * gw, channels * pt * ph * pw):
        raise ValueError(f"tokens {tuple(tokens.shape)} do not match grid {grid} x patch {patch} x {channels} channels")
    x = tokens.reshape(gt, gh, gw, channels, pt, ph, pw)
    x = x.permute(3, 0, 4, 1, 5, 2, 6)                     # [C, gt, pt, gh, ph, gw, pw]
    return x.reshape(channels, gt * pt, gh * ph, gw * pw)

