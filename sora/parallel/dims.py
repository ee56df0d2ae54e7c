"""The one object that owns the parallel dimensions (world = dp x sp)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

from sora.config import ConfigError


@dataclass(frozen=True)
class ParallelDims:
    world: int
    rank: int
    sp: int = 1

    def __post_init__(self):
        if self.world % self.sp:
            raise ValueError(f"world size {self.world} is not divisible by parallel.sp={self.sp}")

    @property
    def dp(self) -> int:
        return self.world // self.sp

    @property
    def dp_rank(self) -> int:
        # Ranks of one sequence-parallel group are consecutive and share a data-parallel rank.
        return self.rank // self.sp

    @property
    def sp_rank(self) -> int:
        return self.rank % self.sp

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def compute_device():
    """This rank's device: DeepSpeed's accelerator (DS_ACCELERATOR, else what DeepSpeed detects), so
    the process group's backend, the model's tensors and DeepSpeed's engine always agree (the
    engine moves the model to that accelerator's device LOCAL_RANK). DS_ACCELERATOR=cpu on a GPU
    host therefore trains on the CPU, as the test suite does."""
    import torch
    from deepspeed.accelerator import get_accelerator

    name = get_accelerator().device_name()
    if name == "cpu":
        return torch.device("cpu")
    if name != "cuda":
        raise ConfigError(f"DeepSpeed accelerator '{name}' (DS_ACCELERATOR): sora trains on cuda or cpu")
    local, count = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
    if local >= count:
        raise ConfigError(f"LOCAL_RANK={local} but {count} CUDA device(s) are visible: start at most {count} "
                          f"rank(s) per node (e.g. sora-launch local --nproc {count})")
    return torch.device("cuda", local)


def init_distributed(sp: int = 1, timeout_s: float = 600.0) -> ParallelDims:
    """Start torch.distributed (gloo on CPU, NCCL on GPU) through DeepSpeed; works for one process
    without a launcher too (a single-rank group on a free local port). A GPU rank binds its device
    (cuda:LOCAL_RANK) first: NCCL and every later allocation use the current device."""
    import deepspeed
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        if "RANK" not in os.environ:  # plain `sora train`: a world of one
            os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                              MASTER_PORT=os.environ.get("MASTER_PORT", str(_free_port())))
        device = compute_device()
        if device.type == "cuda":
            torch.cuda.set_device(device)
        deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo",
                                   verbose=False, timeout=timedelta(seconds=timeout_s))
    world = dist.get_world_size()
    if world % sp:
        raise ConfigError(f"config key 'parallel.sp': world size {world} is not divisible by sp={sp}")
    return ParallelDims(world=world, rank=dist.get_rank(), sp=sp)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
