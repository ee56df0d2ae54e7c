"""`sora export`: a checkpoint's ZeRO shards -> weights others can use, offline.

Formats: `sora` (one full-weights safetensors file, what `sora sample --run FILE` takes);
`diffusers` (a Wan run's DiT as a WanTransformer3DModel directory, LoRA merged); `lora` (a Wan
run's adapter as OUT/pytorch_lora_weights.safetensors, for WanPipeline.load_lora_weights(OUT)).

Model weights come from DeepSpeed's own consolidation of its fp32 partitions; the EMA is ours
(sora.train.ema keeps one partition per rank, laid out like each parameter's ZeRO-3 `ds_tensor`:
the flattened parameter split into equal, zero-padded pieces in rank order). The run's config
rides in the file's metadata, so `sora sample --run FILE` needs nothing else but the VAE run.
A LoRA run's checkpoints hold only the adapters: they are merged into the rebuilt base weights
(the file's config then has lora.rank = 0).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sora.config import Config, config_from_dict, to_dict
from sora.models.lora import lora_scale, lora_to_diffusers, merge_lora, plain_name, trained_parameters
from sora.models.t2v import initial_model
from sora.train.artifacts import base_weights, run_config, without_lora
from sora.train.checkpoint import newest_tag

CONFIG_KEY = "sora_config"


def _param_shapes(cfg: Config) -> list[tuple[str, torch.Size]]:
    """(name, shape) of what the run trains, in the order its checkpoints list them, built on the meta
    device from configs alone (a frozen encoder's config.json gives the DiT's text width; no weights
    are read)."""
    text_dim = None
    if cfg.text.encoder != "hash":
        from sora.models.pretrained import text_model_info
        text_dim = text_model_info(cfg.text.path)[1] or None   # unknown width: build the encoder
    with torch.device("meta"):
        model = initial_model(cfg, load_pretrained=False, text_dim=text_dim)
    return [(n, p.shape) for n, p in trained_parameters(model)]


def ema_from_shards(cfg: Config, tag_dir: Path) -> dict[str, torch.Tensor]:
    paths = sorted(tag_dir.glob("ema_rank*.safetensors"))
    if not paths:
        raise FileNotFoundError(f"no ema_rank*.safetensors in '{tag_dir}'")
    ranks = [load_file(str(p)) for p in paths]
    out = {}
    for i, (name, shape) in enumerate(_param_shapes(cfg)):
        parts = [r[str(i)].flatten() for r in ranks]
        numel = math.prod(shape)
        if cfg.train.zero_stage == 3:
            if sum(p.numel() for p in parts) < numel:
                raise ValueError(f"EMA shards of '{name}' hold {sum(p.numel() for p in parts)} values, need {numel}")
            out[name] = torch.cat(parts)[:numel].view(shape).clone()
        else:                     # ZeRO 0-2 keep whole parameters on every rank
            out[name] = parts[0].view(shape).clone()
    return out


FORMATS = ("sora", "diffusers", "lora")
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"     # the file name diffusers' load_lora_weights looks for


def write_diffusers(dit, adapter: dict[str, torch.Tensor], scale: float, out: Path, format: str) -> Path:
    """A Wan DiT's weights (`dit`, its base) and LoRA adapter (plain names relative to the DiT;
    empty: none) -> `out` in diffusers' form: the full model with the adapter merged, or the adapter."""
    from sora.models import save_dit, wan

    if not wan.is_wan(dit):
        raise ValueError(f"--format {format}: this run's DiT is not a Wan transformer, diffusers has no form for it "
                         "(use --format sora)")
    if format == "diffusers":
        if adapter:
            dit.load_state_dict(merge_lora(dit.state_dict(), adapter, scale))
        return save_dit(dit, out)
    if not adapter:
        raise ValueError("--format lora: the run trained no LoRA adapter (lora.rank = 0); use --format diffusers")
    out.mkdir(parents=True, exist_ok=True)
    state = lora_to_diffusers(adapter, wan.rules(wan.config_of(dit)), scale)
    tmp = out / (LORA_WEIGHTS + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    tmp.replace(out / LORA_WEIGHTS)
    return out


def export_run(run_dir: str | Path, out: str | Path, ema: bool = False, tag: str | None = None,
               format: str = "sora") -> Path:
    if format not in FORMATS:
        raise ValueError(f"unknown export format '{format}'; known: {', '.join(FORMATS)}")
    run_dir, out = Path(run_dir), Path(out)
    cfg = run_config(run_dir)
    ckpt = run_dir / "checkpoints"
    tag = tag or newest_tag(ckpt)
    if tag is None or not (ckpt / tag).is_dir():
        raise FileNotFoundError(f"no complete checkpoint{' ' + tag if tag else ''} in '{ckpt}'")
    if ema:
        state = ema_from_shards(cfg, ckpt / tag)
    else:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag=tag)
    expected = {n for n, _ in _param_shapes(cfg)}
    if set(state) != expected:
        raise ValueError(f"checkpoint {tag} does not match the run's model: missing {sorted(expected - set(state))[:5]}, "
                         f"unexpected {sorted(set(state) - expected)[:5]}")
    if format != "sora":
        model = initial_model(without_lora(cfg))                     # the base weights (the run's start)
        adapter = {plain_name(k)[len("dit."):]: v for k, v in state.items()} if cfg.lora.rank else {}
        if not cfg.lora.rank:
            model.load_state_dict(state)
        return write_diffusers(model.dit, adapter, lora_scale(cfg.lora.rank, cfg.lora.alpha), out, format)
    if cfg.lora.rank:
        adapter = {plain_name(k): v for k, v in state.items()}
        state = merge_lora(base_weights(cfg), adapter, lora_scale(cfg.lora.rank, cfg.lora.alpha))
        cfg = without_lora(cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file({k: v.detach().float().contiguous() for k, v in state.items()}, str(tmp),
              metadata={CONFIG_KEY: yaml.safe_dump(to_dict(cfg), sort_keys=False), "sora_checkpoint": tag,
                        "sora_weights": "ema" if ema else "model"})
    tmp.replace(out)
    return out


def config_of_export(path: str | Path) -> Config:
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if CONFIG_KEY not in meta:
        raise ValueError(f"'{path}' has no {CONFIG_KEY} metadata: not written by `sora export`")
    return config_from_dict(yaml.safe_load(meta[CONFIG_KEY]))
