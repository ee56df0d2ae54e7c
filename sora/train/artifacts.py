"""Final weights on disk: safetensors + the run's config.yaml (no pickle anywhere)."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sora.config import Config, ConfigError, load_config
from sora.models.vae import CausalVAE


def save_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp))
    tmp.replace(path)  # never leave a half-written file under the final name


def run_config(run_dir: str | Path) -> Config:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no config.yaml in run directory '{run_dir}' (has the run been trained?)")
    return load_config(str(path))


def build_vae(cfg: Config) -> CausalVAE:
    return CausalVAE(cfg.vae.channels, cfg.vae.latent_channels, cfg.vae.ft, cfg.vae.fh)


def load_vae(run_dir: str | Path, device="cpu") -> tuple[CausalVAE, Config]:
    cfg = run_config(run_dir)
    path = Path(run_dir) / "vae.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"no vae.safetensors in '{run_dir}': run `sora train-vae` first")
    vae = build_vae(cfg)
    vae.load_state_dict(load_file(str(path)))
    return vae.to(device).eval().requires_grad_(False), cfg


def check_vae_matches(cfg: Config, vae_cfg: Config) -> None:
    for key in ("latent_channels", "ft", "fh", "channels"):
        mine, theirs = getattr(cfg.vae, key), getattr(vae_cfg.vae, key)
        if mine != theirs:
            raise ConfigError(f"config key 'vae.{key}' is {mine} but the VAE run '{cfg.vae.run}' was trained with {theirs}")


def check_pretrained_vae_matches(cfg: Config, vae, path: str) -> None:
    """A diffusers VAE (sora.models.pretrained.DiffusersVAE) against the config's factors."""
    for key in ("ft", "fh", "latent_channels"):
        if getattr(vae, key) != getattr(cfg.vae, key):
            raise ConfigError(f"config key 'vae.{key}' is {getattr(cfg.vae, key)} but the pretrained VAE "
                              f"'{path}' has {getattr(vae, key)}")
