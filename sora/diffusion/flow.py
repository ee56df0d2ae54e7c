"""Rectified flow / flow matching: x_t = (1 - t) x0 + t eps, target velocity v = eps - x0.

t = 1 is pure noise. Timesteps are logit-normal, then shifted towards noise for samples with
more tokens (larger samples keep more signal at a given t, as in SD3 / Flux resolution shift).
"""
from __future__ import annotations

import math

import torch

from sora.ops.packing_index import sample_index, token_positions


def token_shift(tokens: torch.Tensor, cfg) -> torch.Tensor:
    """Per-sample shift, log-linear in token count between (base_tokens, shift_base) and (max_tokens, shift_max)."""
    lo, hi = math.log(cfg.base_tokens), math.log(cfg.max_tokens)
    frac = ((tokens.float().clamp(min=1).log() - lo) / (hi - lo)).clamp(0.0, 1.0)
    return torch.exp(math.log(cfg.shift_base) + frac * (math.log(cfg.shift_max) - math.log(cfg.shift_base)))


def shift_time(t: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    return shift * t / (1 + (shift - 1) * t)


def sample_timesteps(tokens: torch.Tensor, cfg, generator: torch.Generator | None = None) -> torch.Tensor:
    """tokens [B] per-sample token counts -> t [B] in (0, 1)."""
    u = torch.randn(tokens.shape, generator=generator) * cfg.logit_std + cfg.logit_mean
    return shift_time(torch.sigmoid(u), token_shift(tokens, cfg))


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x0, noise and t (each value's sample time) of one shape -> x_t."""
    t = t.to(x0.dtype)
    return (1 - t) * x0 + t * noise


def first_frame_tokens(cu_seqlens: torch.Tensor, grid: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """[N] bool: the tokens of the first latent frame of each chosen sample [B] that has more than one
    frame (an image has nothing left to generate from its only frame)."""
    n = int(cu_seqlens[-1])
    sid = sample_index(cu_seqlens, n)                                      # [N]
    frame = token_positions(cu_seqlens, grid)[:, 0]                        # [N]
    return (chosen & (grid[:, 0] > 1))[sid] & (frame == 0)


def flow_loss_sum(pred: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, weight: torch.Tensor,
                  values_per_token: int) -> torch.Tensor:
    """Sum over tokens of each token's mean squared velocity error. pred, x0, noise, weight [N*P]
    packed latents; `weight` is 1 on the values scored (0: given, pad, or another rank's tokens).
    Returned as a sum so the caller can divide by the token count of the whole data-parallel group."""
    err = (pred.float() - (noise - x0).float()).pow(2) * weight               # [N*P]
    return err.sum() / values_per_token
