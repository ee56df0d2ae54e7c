"""A DeepSpeed engine for one trained module: AdamW, the warm-up + cosine schedule, ZeRO and precision."""
from __future__ import annotations

import torch

from sora.config import Config
from sora.parallel.deepspeed_config import deepspeed_config
from sora.train.schedule import warmup_cosine


def build_engine(cfg: Config, module: torch.nn.Module, bf16: bool, mpu=None, whole_params: bool = False):
    """-> (engine, LR scheduler). `whole_params`: ZeRO stage <= 2, parameters stay whole on every
    rank (the VAE: under ZeRO-3 every forward gathers collectively, which would need the same
    number of clips on every rank)."""
    import deepspeed

    # only what trains (everything, or the LoRA adapters): frozen weights get no optimizer state
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps,
                            weight_decay=cfg.optim.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, cfg.optim.warmup, cfg.train.steps, cfg.optim.min_lr_ratio))
    ds = deepspeed_config(cfg, bf16)
    if whole_params:
        ds["zero_optimization"] = {"stage": min(cfg.train.zero_stage, 2)}
    engine, _, _, sched = deepspeed.initialize(model=module, optimizer=opt, lr_scheduler=sched, mpu=mpu, config=ds)
    return engine, sched


def grad_norm(engine) -> float | None:
    """The last step's global gradient norm, or None where DeepSpeed does not compute one (ZeRO
    stage 0 in fp32 clips the gradients without keeping the norm)."""
    norm = engine.get_global_grad_norm()
    return None if norm is None else float(norm)
