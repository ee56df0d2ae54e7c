"""`DiT.denoise`: a list of per-sample latents in, one packed varlen forward, a list out."""
from __future__ import annotations

import torch

from sora.ops.patchify import patch_grid


def _check(model, latents, sigmas, text, first_frame):
    b = len(latents)
    if b == 0 or len(text) != b or sigmas.shape != (b,):
        raise ValueError(f"denoise: {b} latents need {b} text feature tensors and sigmas [{b}]; got {len(text)} and "
                         f"{tuple(sigmas.shape)}")
    if first_frame is not None and len(first_frame) != b:
        raise ValueError(f"denoise: first_frame has {len(first_frame)} flags for {b} latents")
    text_dim = model.text_dim
    for i, (x, c) in enumerate(zip(latents, text)):
        if x.dim() != 4 or x.shape[0] != model.channels:
            raise ValueError(f"denoise: latents[{i}] has shape {tuple(x.shape)}; expected [{model.channels}, T, H, W]")
        if c.dim() != 2 or c.shape[1] != text_dim or c.shape[0] == 0:
            raise ValueError(f"denoise: text[{i}] has shape {tuple(c.shape)}; expected [L >= 1, {text_dim}]")
    if first_frame is not None and any(first_frame) and model.patch[0] != 1:
        raise ValueError(f"denoise: a clean first latent frame needs a temporal patch of 1, not {model.patch[0]}")


def denoise(model, latents: list[torch.Tensor], sigmas: torch.Tensor, text: list[torch.Tensor],
            first_frame: list[bool] | None = None) -> list[torch.Tensor]:
    """latents: [C, T, H, W] each (any sizes the patch divides; T = 1 images); sigmas [B] flow
    times in [0, 1] (diffusers' timestep / 1000); text: [L_i, text_dim] each, attended to exactly.
    first_frame [B] bool (optional): sample b's first latent frame is clean conditioning (t = 0
    there, as diffusers' per-token timestep [B, L] for Wan 2.2 TI2V).
    -> [C_out, T, H, W] each, the model's velocity (Wan: its `sample` output)."""
    _check(model, latents, sigmas, text, first_frame)
    ref = next(model.parameters())
    grids = [patch_grid(x.shape, model.patch) for x in latents]
    lens = torch.tensor([g[0] * g[1] * g[2] for g in grids])
    cu = torch.cat([lens.new_zeros(1), lens.cumsum(0)]).int().to(ref.device)
    layout = model.kernels.layout(cu, torch.tensor(grids, dtype=torch.int32, device=ref.device))
    text_lens = torch.tensor([c.shape[0] for c in text])
    cu_ctx = torch.cat([text_lens.new_zeros(1), text_lens.cumsum(0)]).int().to(ref.device)
    given = None
    if first_frame is not None:
        flags = torch.tensor([bool(f) for f in first_frame], device=ref.device)
        given = flags[layout.sample_index] & (layout.positions[:, 0] == 0)       # [N] the first token frame
    packed = torch.cat([x.to(ref).reshape(-1) for x in latents])                 # [N*P]
    ctx = torch.cat([c.to(ref) for c in text])                                   # [M, Dt]
    out = model(packed, layout, sigmas.to(ref.device, torch.float32), ctx, cu_ctx, given)   # [N*P_out]
    p_out = out.numel() // int(cu[-1])
    return [out[int(cu[b]) * p_out:int(cu[b + 1]) * p_out].view(model.out_channels, *x.shape[1:])
            for b, x in enumerate(latents)]
