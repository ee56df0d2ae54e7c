"""Final weights on disk: safetensors + the run's config.yaml (no pickle anywhere).

RUN_DIR/final/ holds model.safetensors and ema.safetensors (full weights); a LoRA run writes
adapter.safetensors and adapter_ema.safetensors instead (the adapters only, plain names, its
lora.* settings in the metadata), and the merged full weights under the usual names too when
lora.save_merged is set.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sora.config import Config, ConfigError, load_config
from sora.models.lora import adapter_metadata, lora_scale, merge_lora, plain_name
from sora.models.vae import CausalVAE


def save_weights(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp), metadata=metadata)
    tmp.replace(path)  # never leave a half-written file under the final name


def save_final(cfg: Config, final: Path, weights: dict[str, torch.Tensor], ema: dict[str, torch.Tensor]) -> None:
    """The run's final weights into `final` (see the module docstring). `weights`: the gathered
    parameters (under LoRA: the adapters, plus the frozen base when lora.save_merged); `ema`: the
    EMA of what trained."""
    if not cfg.lora.rank:
        save_weights(weights, final / "model.safetensors")
        save_weights(ema, final / "ema.safetensors")
        return
    weights = {plain_name(k): v for k, v in weights.items()}
    adapters = {"adapter": {k: v for k, v in weights.items() if ".lora_" in k},
                "adapter_ema": {plain_name(k): v for k, v in ema.items()}}
    for name, adapter in adapters.items():
        save_weights(adapter, final / f"{name}.safetensors", adapter_metadata(cfg.lora))
    if cfg.lora.save_merged:
        base = {k: v for k, v in weights.items() if ".lora_" not in k}
        scale = lora_scale(cfg.lora.rank, cfg.lora.alpha)
        save_weights(merge_lora(base, adapters["adapter"], scale), final / "model.safetensors")
        save_weights(merge_lora(base, adapters["adapter_ema"], scale), final / "ema.safetensors")


def without_lora(cfg: Config) -> Config:
    """The config of a LoRA run's merged weights: the same model, no adapters."""
    return dataclasses.replace(cfg, lora=dataclasses.replace(cfg.lora, rank=0))


def base_weights(cfg: Config) -> dict[str, torch.Tensor]:
    """The frozen weights a LoRA run started from (rebuilt: checkpoints do not hold them)."""
    from sora.models.t2v import initial_model

    return initial_model(without_lora(cfg)).state_dict()


def final_weights(run_dir: str | Path, ema: bool) -> tuple[Config, dict[str, torch.Tensor]]:
    """(config, full weights) of a finished run directory (a LoRA run's adapter merged into its base),
    or of a file `sora export` wrote (its config in the metadata)."""
    if Path(run_dir).is_file():
        from sora.export import config_of_export

        return config_of_export(run_dir), load_file(str(run_dir))
    cfg, final = run_config(run_dir), Path(run_dir) / "final"
    name = "ema.safetensors" if ema else "model.safetensors"
    if cfg.lora.rank and not (final / name).is_file():
        name = "adapter_ema.safetensors" if ema else "adapter.safetensors"
    if not (final / name).is_file():
        raise FileNotFoundError(f"no {name} in '{final}': has `sora train` finished?")
    state = load_file(str(final / name))
    if not cfg.lora.rank:
        return cfg, state
    if name.startswith("adapter"):
        state = merge_lora(base_weights(cfg), state, lora_scale(cfg.lora.rank, cfg.lora.alpha))
    return without_lora(cfg), state


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


def check_vae_factors(cfg: Config, vae, path: str) -> None:
    """A loaded VAE (ours, or a diffusers one: sora.models.pretrained.DiffusersVAE) against the config's factors."""
    for key in ("ft", "fh", "latent_channels"):
        if getattr(vae, key) != getattr(cfg.vae, key):
            raise ConfigError(f"config key 'vae.{key}' is {getattr(cfg.vae, key)} but the VAE "
                              f"'{path}' has {getattr(vae, key)}")
