"""Periodic DeepSpeed checkpoints with a pointer to the newest complete one.

Every rank writes its shards (each engine's model/optimizer/LR schedule via DeepSpeed, the EMA
shard via safetensors, RNG and loader position as JSON) into a temporary directory; only after a
barrier does rank 0 rename it into place and move the `newest` pointer (write-then-rename), so an
interrupted save never becomes the one a restart resumes from.

Frozen weights (all but the adapters of a LoRA run) are not saved: they are the run's starting
weights, which every start rebuilds the same way (`initial_model`); a checkpoint holds what trains,
its optimizer state and EMA.

Layout of `checkpoints/stepN/`: the first engine (the trained model) at the top, in DeepSpeed's
own layout (what `sora export` reads); any other engine (the VAE's discriminator) in a
subdirectory named after it.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

log = logging.getLogger("sora.train")


TMP_PREFIX = "tmp-"


def newest_tag(ckpt_dir: Path) -> str | None:
    ptr = ckpt_dir / "newest"
    if not ptr.is_file():
        return None
    tag = ptr.read_text().strip()
    return tag if (ckpt_dir / tag).is_dir() else None


def complete_tags(ckpt_dir: Path) -> list[str]:
    """Checkpoints that were renamed into place (sorted oldest first)."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(p.name for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith("step"))


def step_tag(step: int) -> str:
    return f"step{step:08d}"


def _engine_dir(ckpt_dir: Path, tag: str, index: int, name: str) -> tuple[str, str]:
    """(save_dir, tag) DeepSpeed is given for the index-th engine."""
    return (str(ckpt_dir), tag) if index == 0 else (str(ckpt_dir / tag), name)


def save_checkpoint(engines: dict, ema, ckpt_dir: Path, step: int, keep: int, rank_state: dict | None = None) -> str:
    """All ranks write into tmp-TAG; after a barrier rank 0 renames it to TAG, then moves the
    `newest` pointer (write + rename), then prunes. A crash at any point leaves `newest` on a
    complete checkpoint; leftover tmp-* directories are removed at the next start."""
    tag = step_tag(step)
    tmp_tag = TMP_PREFIX + tag
    for i, (name, engine) in enumerate(engines.items()):
        save_dir, ds_tag = _engine_dir(ckpt_dir, tmp_tag, i, name)
        engine.save_checkpoint(save_dir, tag=ds_tag, client_state={"step": step}, save_latest=False,
                               exclude_frozen_parameters=True)
    rank = dist.get_rank()
    if ema is not None:
        save_file({str(i): s.contiguous() for i, s in enumerate(ema.shadow)},
                  str(ckpt_dir / tmp_tag / f"ema_rank{rank:05d}.safetensors"))
    if rank_state is not None:
        (ckpt_dir / tmp_tag / f"state_rank{rank:05d}.json").write_text(json.dumps(rank_state))
    dist.barrier()
    if rank == 0:
        final = ckpt_dir / tag
        if final.exists():            # a newer run reached this step again after a resume
            shutil.rmtree(final)
        (ckpt_dir / tmp_tag).rename(final)
        ptr = ckpt_dir / "newest.tmp"
        ptr.write_text(tag)
        ptr.replace(ckpt_dir / "newest")
        tags = [t for t in complete_tags(ckpt_dir) if t != tag]
        for old in tags[:max(0, len(tags) - (keep - 1))] if keep > 0 else []:
            shutil.rmtree(ckpt_dir / old, ignore_errors=True)
    dist.barrier()
    return tag


def remove_incomplete(ckpt_dir: Path) -> list[str]:
    """Delete saves that never completed (rank 0, before anyone writes)."""
    gone = []
    if ckpt_dir.is_dir():
        for p in ckpt_dir.iterdir():
            if p.is_dir() and p.name.startswith(TMP_PREFIX):
                shutil.rmtree(p, ignore_errors=True)
                gone.append(p.name)
    return gone


def _load_trained(src: dict, dst: torch.nn.Module) -> None:
    """Load a saved module state strictly, except for the frozen weights it does not hold."""
    frozen = {n for n, p in dst.named_parameters() if not p.requires_grad}
    result = dst.load_state_dict(src, strict=False)
    missing = set(result.missing_keys) - frozen
    if missing or result.unexpected_keys:
        raise RuntimeError(f"checkpoint does not match the model: missing {sorted(missing)[:5]}, "
                           f"unexpected {sorted(result.unexpected_keys)[:5]} (was it saved with other lora.* settings?)")


def load_checkpoint(engines: dict, ema, ckpt_dir: Path) -> tuple[int, dict | None]:
    """Resume from the newest complete checkpoint: (next step, this rank's saved state or None)."""
    if dist.get_rank() == 0:
        for name in remove_incomplete(ckpt_dir):
            log.warning("removed incomplete checkpoint %s", ckpt_dir / name)
    dist.barrier()
    tag = newest_tag(ckpt_dir)
    if tag is None:
        return 0, None
    start = 0
    for i, (name, engine) in enumerate(engines.items()):
        load_dir, ds_tag = _engine_dir(ckpt_dir, tag, i, name)
        if i and not (ckpt_dir / tag / name).is_dir():
            raise FileNotFoundError(f"checkpoint {ckpt_dir / tag} has no state for '{name}' (was it saved "
                                    "by a run configured without it?)")
        _, client = engine.load_checkpoint(load_dir, tag=ds_tag, custom_load_fn=_load_trained)
        start = start or int(client["step"]) + 1
    rank = dist.get_rank()
    if ema is not None:
        shards = load_file(str(ckpt_dir / tag / f"ema_rank{rank:05d}.safetensors"))
        ema.load_shadow([shards[str(i)] for i in range(len(shards))])
    state_file = ckpt_dir / tag / f"state_rank{rank:05d}.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else None
    return start, state


def gather_full_state(module, named_params=None) -> dict[str, torch.Tensor]:
    """Full weights on rank 0 (one parameter gathered at a time under ZeRO-3); empty elsewhere.
    `named_params`: (name, parameter) pairs to gather instead of all of `module`'s."""
    import deepspeed

    out = {}
    for name, p in named_params if named_params is not None else module.named_parameters():
        with deepspeed.zero.GatheredParameters([p], modifier_rank=None, enabled=hasattr(p, "ds_id")):
            if dist.get_rank() == 0:
                out[name] = p.data.detach().float().cpu().clone()
    return out
