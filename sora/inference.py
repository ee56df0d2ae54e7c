"""Load a trained run (or exported weights) and generate videos of any allowed size."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sora.config import Config, ConfigError, untrained_first_frame_mode, uses_bf16
from sora.data.packing import pack, PackItem
from sora.diffusion.samplers import sample
from sora.models.t2v import TextToVideo, initial_model
from sora.ops.patchify import unpatchify
from sora.shapes import ShapeRules, patch_grid
from sora.train.artifacts import check_vae_factors, final_weights, load_vae


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class _InModelDtype:
    """The model called in its own dtype (bf16 where the run trained in bf16 on this device) while
    the sampler integrates in float32; everything else (layout, dit) is the model's."""

    def __init__(self, model, dtype):
        self.model, self.dtype = model, dtype

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, x, *args, **kwargs):
        return self.model(x.to(self.dtype), *args, **kwargs).float()


def load_decoder(pretrained: str, run: str, device):
    """The VAE that decodes samples: a diffusers VAE directory (vae.pretrained), else a stage-1 run."""
    if pretrained:
        from sora.models.pretrained import DiffusersVAE

        return DiffusersVAE(pretrained).to(device)
    return load_vae(run, device)[0]


class VideoGenerator:
    def __init__(self, cfg: Config, model: TextToVideo, vae, device="cpu"):
        self.cfg, self.model, self.vae, self.device = cfg, model.eval(), vae, device
        self.dtype = next(model.parameters()).dtype

    @classmethod
    def from_run(cls, run_dir: str | Path, ema: bool = True, device="cpu") -> "VideoGenerator":
        """A run directory (its final weights, EMA or raw), a file written by `sora export`, or a
        diffusers Wan pipeline directory (its own weights, Wan's sampling defaults). The model runs
        in the run's train.precision on `device` (bf16 on a GPU under `auto`), with the kernel
        backends `model.backend` names for that device."""
        from sora.models.wan_pipeline import is_wan_pipeline, wan_pipeline_config

        state = None
        if is_wan_pipeline(run_dir):
            vae = load_decoder(str(Path(run_dir) / "vae"), "", device)
            cfg = wan_pipeline_config(run_dir, vae)
        else:
            cfg, state = final_weights(run_dir, ema)   # an export file, or a run (a LoRA adapter merged)
        # A Wan pipeline directory is a run that has not trained: its model is the starting one.
        model = initial_model(cfg, str(device)) if state is None else TextToVideo(cfg, device=str(device))
        if state is not None:
            model.load_state_dict(state)
            vae = load_decoder(cfg.vae.pretrained, cfg.vae.run, device)
        check_vae_factors(cfg, vae, cfg.vae.pretrained or cfg.vae.run)
        dtype = torch.bfloat16 if uses_bf16(cfg.train.precision, torch.device(device).type) else torch.float32
        return cls(cfg, model.to(device, dtype), vae, device)

    @property
    def playback_fps(self) -> float:
        """Frames per second the model's clips move at: the rate it trained at (data.fps), else the
        moving-shapes world's 8."""
        return float(self.cfg.data.fps) if self.cfg.data.fps > 0 else 8.0

    def check_size(self, frames: int, height: int, width: int) -> None:
        rules = ShapeRules.of(self.cfg)
        for flag, problem in (("--frames", rules.frames_problem(frames)),
                              ("--height/--width", rules.sides_problem(height, width))):
            if problem:
                raise ConfigError(f"{flag}: {problem}")

    @torch.no_grad()
    def generate(self, prompts: list[str], frames: int, height: int, width: int, steps: int | None = None,
                 guidance: float | None = None, seed: int = 0, method: str | None = None,
                 first_frame=None, negative_prompt: str | None = None) -> list[np.ndarray]:
        """-> one uint8 video [T, H, W, 3] per prompt.

        first_frame: "joint" (every frame denoised together), "generate" (text -> first frame as an
        image, then the clip from it: Emu Video's factorisation), a uint8 image [H, W, 3] to animate
        (image-to-video), or None for the run's `sample.first_frame`. steps, guidance, method and
        negative_prompt: None for the run's `sample:` section."""
        latents = self.generate_latents(prompts, frames, height, width, steps, guidance, seed, method, first_frame,
                                        negative_prompt)
        videos = []
        for latent in latents:                                                  # [C, T', H', W']
            video = self.vae.decode(latent[None].float())[0]                    # [3, T, H, W]
            video = ((video.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 3, 0).cpu().numpy()
            videos.append(video)                                                # [T, H, W, 3]
        return videos

    @torch.no_grad()
    def generate_latents(self, prompts: list[str], frames: int, height: int, width: int, steps: int | None = None,
                         guidance: float | None = None, seed: int = 0, method: str | None = None,
                         first_frame=None, negative_prompt: str | None = None) -> list[torch.Tensor]:
        """`generate` before decoding: one latent [C, T', H', W'] per prompt."""
        self.check_size(frames, height, width)
        mode = self.cfg.sample.first_frame if first_frame is None else first_frame
        image = None if isinstance(mode, str) else mode
        if image is None and mode not in ("joint", "generate"):
            raise ConfigError(f"--first-frame '{mode}': expected joint, generate or an image")
        problem = untrained_first_frame_mode(self.cfg, mode if image is None else "image") if frames > 1 else None
        if problem:
            raise ConfigError(f"--first-frame {problem}")
        grid = ShapeRules.of(self.cfg).grid(frames, height, width)
        g = torch.Generator().manual_seed(seed)
        s = self.cfg.sample
        run = dict(steps=steps or s.steps, guidance=s.cfg if guidance is None else guidance,
                   method=method or s.sampler, negative=s.negative_prompt if negative_prompt is None else negative_prompt)
        if image is not None:
            first = [self._encode_image(image, height, width)] * len(prompts)    # [C, 1, H', W'] each
        elif mode == "generate" and frames > 1:
            first = self._denoise(prompts, self.noise(len(prompts), (1,) + grid[1:], g), **run)
        else:                                                                   # joint, or a text -> image
            first = None
        if first is not None and frames == 1:
            return first                                                        # the given image itself
        return self._denoise(prompts, self.noise(len(prompts), grid, g), first=first, **run)

    def noise(self, count: int, grid, g: torch.Generator) -> list[torch.Tensor]:
        """`count` starting noises [C, T', H', W'] on a token grid, drawn per token then laid out as a
        latent (the same draws whatever the layout)."""
        c, patch = self.vae.latent_channels, self.cfg.model.patch
        n, p = grid[0] * grid[1] * grid[2], c * int(np.prod(patch))
        return [unpatchify(torch.randn(n, p, generator=g), grid, patch, c) for _ in range(count)]

    def _denoise(self, prompts, noise: list[torch.Tensor], steps: int, guidance: float, method: str, negative: str,
                 first=None) -> list[torch.Tensor]:
        """Sample one latent [C, T', H', W'] per prompt from its noise; `first` (optional): each
        prompt's first-frame latent [C, 1, H', W'], held fixed (given)."""
        c, patch = self.vae.latent_channels, self.cfg.model.patch
        p = c * int(np.prod(patch))
        grid = patch_grid(*noise[0].shape[1:], patch)                          # every noise has one size
        n = grid[0] * grid[1] * grid[2]
        items = [PackItem(z, grid, prompt, str(i)) for i, (z, prompt) in enumerate(zip(noise, prompts))]
        batch = pack(items).to(self.device)
        given = x_given = None
        if first is not None:
            given = torch.zeros(n, dtype=torch.bool)
            given[:grid[1] * grid[2]] = True                                    # the first token frame
            given = given.repeat(len(prompts)).to(self.device)                  # [N]
            x_given = torch.cat([torch.cat([f.to(batch.latents), torch.zeros_like(it.latent[:, f.shape[1]:]).to(
                batch.latents)], dim=1).reshape(-1) for f, it in zip(first, items)])   # [N*P]
        x = sample(_InModelDtype(self.model, self.dtype), batch.latents, batch.cu_seqlens, batch.grid, batch.captions,
                   steps, guidance, self.cfg.diffusion, method, given=given, x_given=x_given, negative=negative,
                   shift=self.cfg.sample.shift)
        shape = (c, grid[0] * patch[0], grid[1] * patch[1], grid[2] * patch[2])
        return [x[int(batch.cu_seqlens[b]) * p:int(batch.cu_seqlens[b + 1]) * p].view(shape)
                for b in range(len(prompts))]

    def _encode_image(self, image: np.ndarray, height: int, width: int) -> torch.Tensor:
        """uint8 [H, W, 3] -> first-frame latent [C, 1, H', W'] at height x width (resized, centre-cropped)."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"first frame must be a uint8 image [H, W, 3], got {image.dtype} {image.shape}")
        x = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 127.5 - 1.0   # [1, 3, H, W]
        s = max(height / x.shape[2], width / x.shape[3])
        size = (max(height, round(x.shape[2] * s)), max(width, round(x.shape[3] * s)))
        x = torch.nn.functional.interpolate(x, size=size, mode="area" if s < 1 else "bilinear", align_corners=None)
        top, left = (size[0] - height) // 2, (size[1] - width) // 2
        x = x[:, :, top:top + height, left:left + width]                        # [1, 3, height, width]
        return self.vae.encode(x[:, :, None].to(self.device))[0]               # [C, 1, H', W']
