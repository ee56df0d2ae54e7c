"""Periodic DeepSpeed checkpoints with a pointer to the newest complete one.

Every rank writes its shards (model/optimizer via DeepSpeed, EMA shard via safetensors); only
after a barrier does rank 0 move the `newest` pointer (write-then-rename), so an interrupted
save never becomes the one a restart resumes from.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file


def newest_tag(ckpt_dir: Path) -> str | None:
    ptr = ckpt_dir / "newest"
    if not ptr.is_file():
        return None
    tag = ptr.read_text().strip()
    return tag if (ckpt_dir / tag).is_dir() else None


def save_checkpoint(engine, ema, ckpt_dir: Path, step: int, keep: int) -> str:
    tag = f"step{step:08d}"
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state={"step": step}, save_latest=False)
    rank = dist.get_rank()
    save_file({str(i): s.contiguous() for i, s in enumerate(ema.shadow)}, str(ckpt_dir / tag / f"ema_rank{rank:05d}.safetensors"))
    dist.barrier()
    if rank == 0:
        tmp = ckpt_dir / "newest.tmp"
        tmp.write_text(tag)
        tmp.replace(ckpt_dir / "newest")
        tags = sorted(p.name for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith("step"))
        for old in tags[:-keep] if keep > 0 else []:
            shutil.rmtree(ckpt_dir / old, ignore_errors=True)
    dist.barrier()
    return tag


def load_checkpoint(engine, ema, ckpt_dir: Path) -> int:
    """Resume from the newest complete checkpoint; returns the next step (0 when there is none)."""
    tag = newest_tag(ckpt_dir)
    if tag is None:
        return 0
    _, client = engine.load_checkpoint(str(ckpt_dir), tag=tag)
    shards = load_file(str(ckpt_dir / tag / f"ema_rank{dist.get_rank():05d}.safetensors"))
    ema.load_shadow([shards[str(i)] for i in range(len(shards))])
    return int(client["step"]) + 1


def gather_full_state(module) -> dict[str, torch.Tensor]:
    """Full weights on rank 0 (one parameter gathered at a time under ZeRO-3); empty elsewhere."""
    import deepspeed

    out = {}
    for name, p in module.named_parameters():
        with deepspeed.zero.GatheredParameters([p], modifier_rank=None, enabled=hasattr(p, "ds_id")):
            if dist.get_rank() == 0:
                out[name] = p.data.detach().float().cpu().clone()
    return out
