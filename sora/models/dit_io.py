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


def _build(kwargs: dict, state: dict, device, backend) -> DiT:
    with torch.device("meta"):
        model = DiT(**kwargs, backend=backend, device=str(device))
    model.load_state_dict(state, assign=True)      # the loaded tensors become the parameters
    return model.to(device).eval()


def _load_run(path: Path, dtype, device, backend) -> DiT:
    """A run directory (final/ema.safetensors, else final/model.safetensors) or a `sora export` file."""
    from sora.models.t2v import dit_of_config

    if path.is_file():
        from sora.export import config_of_export
        cfg, weights = config_of_export(path), path
    else:
        from sora.train.artifacts import run_config
        cfg = run_config(path)
        weights = next((path / "final" / n for n in ("ema.safetensors", "model.safetensors")
                        if (path / "final" / n).is_file()), None)
        if weights is None:
            raise FileNotFoundError(f"'{path}' has no final/ema.safetensors or final/model.safetensors: has `sora train` finished?")
    state = {k[len("dit."):]: v for k, v in _read_safetensors([weights], dtype).items() if k.startswith("dit.")}
    text_dim = state["blocks.0.cross.kv.weight"].shape[1]
    with torch.device("meta"):
        model = dit_of_config(cfg, text_dim, str(device))
    model.load_state_dict(state, assign=True)
    if backend is not None:
        from sora.ops import select_kernels
        model.kernels = select_kernels(backend, device=str(device))
    return model.to(device).eval()


def load_dit(path, dtype: torch.dtype = torch.float32, device="cpu", backend: str | None = None) -> DiT:
    """A DiT from a local diffusers WanTransformer3DModel directory (config.json + safetensors,
    sharded with an index or not), from one of our run directories (config.yaml + final/), or from
    a file `sora export` wrote. backend: the kernel backend (None: auto for `device`)."""
    p = Path(path)
    if p.is_dir() and (p / "config.json").is_file():
        cfg = wan.wan_config(json.loads((p / "config.json").read_text()), str(p / "config.json"))
        state = wan.from_diffusers(_read_safetensors(_diffusers_weights(p), dtype), cfg)
        model = _build(wan.wan_dit_kwargs(cfg), state, device, backend)
        model.wan_config = cfg           # for save_dit (wan.config_of)
        return model
    if (p.is_dir() and (p / "config.yaml").is_file()) or (p.is_file() and p.suffix == ".safetensors"):
        return _load_run(p, dtype, device, backend)
    raise FileNotFoundError(f"load_dit: '{path}' is not a local diffusers model directory (config.json), a run "
                            "directory (config.yaml) or an exported .safetensors file; nothing is downloaded")


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
