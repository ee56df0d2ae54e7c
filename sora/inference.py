"""Load a trained run (or exported weights) and generate videos of any allowed size."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from sora.config import Config, ConfigError
from sora.data.packing import pack, PackItem
from sora.diffusion.samplers import sample
from sora.models.t2v import TextToVideo
from sora.ops.patchify import unpatchify
from sora.train.artifacts import load_vae, run_config


class Generator:
    def __init__(self, cfg: Config, model: TextToVideo, vae, device="cpu"):
        self.cfg, self.model, self.vae, self.device = cfg, model.eval(), vae, device

    @classmethod
    def from_run(cls, run_dir: str | Path, ema: bool = True, device="cpu") -> "Generator":
        """A run directory (its final weights, EMA or raw) or a file written by `sora export`."""
        if Path(run_dir).is_file():
            from sora.export import config_of_export

            cfg, path = config_of_export(run_dir), Path(run_dir)
        else:
            cfg = run_config(run_dir)
            name = "ema.safetensors" if ema else "model.safetensors"
            path = Path(run_dir) / "final" / name
            if not path.is_file():
                raise FileNotFoundError(f"no {name} in '{Path(run_dir) / 'final'}': has `sora train` finished?")
        model = TextToVideo(cfg, device=str(device))
        model.load_state_dict(load_file(str(path)))
        vae, _ = load_vae(cfg.vae.run, device)
        return cls(cfg, model.to(device), vae, device)

    def check_size(self, frames: int, height: int, width: int) -> None:
        v, (pt, ph, pw) = self.cfg.vae, self.cfg.model.patch
        if frames < 1 or (frames - 1) % v.ft:
            raise ConfigError(f"--frames {frames}: must be 1 + {v.ft}*k")
        if height % (v.fh * ph) or width % (v.fh * pw) or height <= 0 or width <= 0:
            raise ConfigError(f"--height/--width {height}x{width}: must be positive multiples of {v.fh * ph}x{v.fh * pw}")
        if ((frames - 1) // v.ft + 1) % pt:
            raise ConfigError(f"--frames {frames}: latent frames not divisible by the temporal patch {pt}")

    @torch.no_grad()
    def generate(self, prompts: list[str], frames: int, height: int, width: int, steps: int | None = None,
                 guidance: float | None = None, seed: int = 0, method: str | None = None) -> list[np.ndarray]:
        """-> one uint8 video [T, H, W, 3] per prompt."""
        self.check_size(frames, height, width)
        s = self.cfg.sample
        c, t, h, w = self.vae.latent_shape(frames, height, width)
        patch = self.cfg.model.patch
        grid = (t // patch[0], h // patch[1], w // patch[2])
        g = torch.Generator().manual_seed(seed)
        items = [PackItem(torch.randn(grid[0] * grid[1] * grid[2], c * patch[0] * patch[1] * patch[2], generator=g),
                          grid, p, str(i)) for i, p in enumerate(prompts)]
        batch = pack(items).to(self.device)
        x = sample(self.model, batch.x, batch.cu_seqlens, batch.max_seqlen, batch.grid, batch.captions,
                   steps or s.steps, s.cfg if guidance is None else guidance, self.cfg.diffusion, method or s.sampler)
        videos = []
        for b in range(len(prompts)):
            lo, hi = int(batch.cu_seqlens[b]), int(batch.cu_seqlens[b + 1])
            latent = unpatchify(x[lo:hi], grid, patch, c)                       # [C, T', H', W']
            video = self.vae.decode(latent[None].float())[0]                    # [3, T, H, W]
            video = ((video.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 3, 0).cpu().numpy()
            videos.append(video)                                                # [T, H, W, 3]
        return videos
