"""`load_dit` / `save_dit`: a DiT from / to a diffusers Wan directory, or from one of our runs.

Only local paths are read (nothing is downloaded) and safetensors are read directly: diffusers is
not needed to load or to save. The model is built on the meta device and takes the loaded tensors
as its parameters, so a 14B checkpoint is never held twice.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sora.models import wan
from sora.models.dit import DiT

WEIGHTS = "diffusion_pytorch_model.safetensors"
INDEX = WEIGHTS + ".index.json"
DIFFUSERS_VERSION = "0.33.1"        # written when diffusers is not installed; any >= 0.33 reads Wan


def _read_safetensors(paths: list[Path], dtype) -> dict[str, torch.Tensor]:
    out = {}
    for p in paths:
        with safe_open(str(p), framework="pt") as f:
            for k in f.keys():
                out[k] = f.get_tensor(k).to(dtype)
    return out


def _diffusers_weights(path: Path) -> list[Path]:
    if (path / INDEX).is_file():
        files = sorted(set(json.loads((path / INDEX).read_text())["weight_map"].values()))
        absent = [f for f in files if not (path / f).is_file()]
        if absent:
            raise FileNotFoundError(f"'{path}': {INDEX} names shards that are not there: {absent[:3]}")
        return [path / f for f in files]
    if (path / WEIGHTS).is_file():
        return [path / WEIGHTS]
    raise FileNotFoundError(f"'{path}' has neither {WEIGHTS} nor {INDEX}")


def _run_config(path: Path):
    if path.is_file():
        from sora.export import config_of_export
        return config_of_export(path)
    from sora.train.artifacts import run_config
    return run_config(path)


def _kind(p: Path) -> str:
    if p.is_dir() and (p / "config.json").is_file():
        return "diffusers"
    if (p.is_dir() and (p / "config.yaml").is_file()) or (p.is_file() and p.suffix == ".safetensors"):
        return "run"
    raise FileNotFoundError(f"'{p}' is not a local diffusers model directory (config.json), a run "
                            "directory (config.yaml) or an exported .safetensors file; nothing is downloaded")


def architecture(path) -> tuple[dict, dict | None]:
    """(DiT keyword arguments, the diffusers Wan config or None) of a model `load_dit` reads; reads
    configs and safetensors headers only, no weights. A run's DiT is the one its config describes
    (through its own model.pretrained, if it started from one)."""
    p = Path(path)
    if _kind(p) == "diffusers":
        cfg = wan.wan_config(json.loads((p / "config.json").read_text()), str(p / "config.json"))
        return wan.wan_dit_kwargs(cfg), cfg
    from sora.models.t2v import dit_kwargs_of_config

    cfg = _run_config(p)
    if cfg.model.pretrained:
        return architecture(cfg.model.pretrained)
    return dit_kwargs_of_config(cfg, _run_text_dim(cfg)), None


def _run_text_dim(cfg) -> int:
    """The caption feature width of a run's DiT: its trained hash encoder's, else its frozen encoder's
    (config.json alone)."""
    if cfg.text.encoder == "hash":
        return cfg.text.dim
    from sora.models.pretrained import text_model_info

    return text_model_info(cfg.text.path)[1]


def new_dit(kwargs: dict, wan_cfg: dict | None, **runtime) -> DiT:
    """A DiT of this architecture (randomly initialised; on the meta device under `torch.device("meta")`).
    runtime: checkpointing, backend, device."""
    model = DiT(**kwargs, **runtime)
    if wan_cfg is not None:
        model.wan_config = wan_cfg       # for save_dit (wan.config_of)
    return model


def dit_weights(path, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The weights of a model `load_dit` reads, under our DiT's parameter names."""
    p = Path(path)
    if _kind(p) == "diffusers":
        cfg = architecture(p)[1]
        return wan.from_diffusers(_read_safetensors(_diffusers_weights(p), dtype), cfg)
    from sora.train.artifacts import final_weights

    weights = final_weights(p, ema=True)[1]         # an export file, or a run (a LoRA adapter merged)
    return {k[len("dit."):]: v.to(dtype) for k, v in weights.items() if k.startswith("dit.")}


def load_dit(path, dtype: torch.dtype = torch.float32, device="cpu", backend: str | None = None) -> DiT:
    """A DiT from a local diffusers WanTransformer3DModel directory (config.json + safetensors,
    sharded with an index or not), from one of our run directories (config.yaml + final/), or from
    a file `sora export` wrote. backend: the kernel backend (None: auto for `device`). The model is
    built on the meta device and takes the loaded tensors as its parameters."""
    kwargs, wan_cfg = architecture(path)
    state = dit_weights(path, dtype)
    with torch.device("meta"):
        model = new_dit(kwargs, wan_cfg, backend=backend, device=str(device))
    model.load_state_dict(state, assign=True)      # the loaded tensors become the parameters
    return model.to(device).eval()


def _shards(state: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    shards, size = [{}], 0
    for k, v in state.items():
        n = v.numel() * v.element_size()
        if shards[-1] and size + n > max_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += n
    return shards


def _diffusers_version() -> str:
    try:
        from importlib.metadata import version
        return version("diffusers")
    except Exception:  # noqa: BLE001 - not installed: the version our mapping was checked against
        return DIFFUSERS_VERSION


def save_dit(model: DiT, out_dir, format: str = "diffusers", max_shard_bytes: int = 10 * 2 ** 30,
             dtype: torch.dtype | None = None) -> Path:
    """Write `model` (a Wan-switched DiT) as a directory diffusers' WanTransformer3DModel.from_pretrained
    loads: config.json + diffusion_pytorch_model.safetensors, or shards + index when larger than
    max_shard_bytes. dtype: cast the weights (None: as they are)."""
    if format != "diffusers":
        raise ValueError(f"save_dit: format {format!r} is not supported (only 'diffusers')")
    cfg = wan.config_of(model)
    state = {k: (v if dtype is None else v.to(dtype)).detach().cpu()
             for k, v in wan.to_diffusers(model.state_dict(), cfg).items()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(
        {"_class_name": wan.CLASS_NAME, "_diffusers_version": _diffusers_version(), **cfg}, indent=2) + "\n")
    shards = _shards(state, max_shard_bytes)
    if len(shards) == 1:
        save_file(shards[0], str(out / WEIGHTS), metadata={"format": "pt"})
        return out
    stem, weight_map = WEIGHTS[:-len(".safetensors")], {}
    for i, shard in enumerate(shards, 1):
        name = f"{stem}-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
    total = sum(v.numel() * v.element_size() for v in state.values())
    (out / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    return out
