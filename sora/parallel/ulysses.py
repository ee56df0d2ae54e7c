"""Ulysses sequence parallelism for the packed DiT: groups, the mpu DeepSpeed needs, the attention wrap.

Each rank of a sequence-parallel group holds a contiguous slice of one packed sequence
(sora.parallel.sequence). Around self-attention DeepSpeed's `DistributedAttention` trades tokens
for heads with an all-to-all, so every rank holds all tokens of the pack for heads/sp heads; RoPE
and varlen attention then run on whole samples with the full `cu_seqlens` and each token's global
(t, h, w), and a second all-to-all trades back. Everything else in the model runs on the slice.

The model never sees any of this: the trainer swaps `kernels.self_attention` for the wrapper and
binds the current pack's full layout to it before each forward.
"""
from __future__ import annotations

import dataclasses

import torch

from sora.parallel.sequence import SequenceShard


def init_sequence_parallel_groups(sp: int):
    """Build the sp groups (consecutive ranks) and return DeepSpeed's sequence-parallel mpu module.

    With that mpu, ZeRO-3 partitions parameters and optimizer state over all ranks (the
    sequence-data-parallel group) and divides summed gradients by dp = world / sp, not world.
    """
    import deepspeed
    import torch.distributed as dist
    from deepspeed.runtime.sequence_parallel import parallel_state_sp as mpu

    if dist.is_initialized():   # DeepSpeed's comm layer adopts a group started by torch.distributed
        deepspeed.init_distributed(dist_backend=dist.get_backend(), verbose=False)
    if mpu._SEQUENCE_PARALLEL_GROUP is None:
        mpu.initialize_sequence_parallel(sp)
    return mpu


class UlyssesSelfAttention:
    """Drop-in for `Kernels.self_attention` on a sequence-parallel slice."""

    def __init__(self, inner, group):
        from deepspeed.sequence.layer import DistributedAttention

        self.inner = inner                         # rope + varlen attention on whole samples
        # Tokens are dim 0 and heads dim 2 of [N, 1, H, Dh]: scatter heads, gather tokens.
        self.distributed = DistributedAttention(self._local, group, scatter_idx=2, gather_idx=0)
        self.shard: SequenceShard | None = None
        self.device = None

    def bind(self, shard: SequenceShard, device) -> None:
        """The layout of the whole (padded) pack for the next forward (and its recomputation)."""
        self.shard = shard
        self.full_cu = shard.full_cu_seqlens.to(device)
        self.full_grid = shard.full_grid.to(device)

    def _local(self, q, k, v, sections, theta):
        # q, k, v [N_padded, 1, H/sp, Dh]: all tokens of the pack, this rank's heads.
        o = self.inner(q[:, 0], k[:, 0], v[:, 0], self.full_cu, self.shard.full_max_seqlen, self.full_grid,
                       sections, theta)
        return o[:, None]

    def __call__(self, q, k, v, cu_seqlens, max_seqlen, grid, sections, theta):
        """q, k, v [L, H, Dh] this rank's slice (the slice's own layout is not needed) -> [L, H, Dh]."""
        if self.shard is None:
            raise RuntimeError("UlyssesSelfAttention used before bind(): the trainer must bind each pack")
        if q.shape[0] != self.shard.hi - self.shard.lo:
            raise ValueError(f"slice holds {q.shape[0]} tokens but the bound shard has {self.shard.hi - self.shard.lo}")
        out = self.distributed(q[:, None], k[:, None], v[:, None], 1, None, sections, theta)
        return out[:, 0]


def wrap_for_sequence_parallel(dit, group) -> UlyssesSelfAttention:
    """Swap the DiT's self-attention kernel for the Ulysses wrapper; returns it for binding."""
    wrapper = UlyssesSelfAttention(dit.kernels.self_attention, group)
    dit.kernels = dataclasses.replace(dit.kernels, self_attention=wrapper)
    return wrapper


def pack_checksum(x: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """A cheap fingerprint of a pack, compared across a sequence-parallel group in debug mode."""
    w = torch.arange(1, x.shape[0] + 1, dtype=torch.float64, device=x.device)
    return torch.stack([(x.double().sum(1) * w).sum(), cu_seqlens.double().sum(), x.new_tensor(x.shape[0], dtype=torch.float64)])
