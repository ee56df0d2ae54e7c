"""Ulysses sequence parallelism for the packed DiT: groups, the mpu DeepSpeed needs, the attention wrap.

Each rank of a sequence-parallel group holds a contiguous slice of one packed sequence
(sora.parallel.sequence). Around self-attention DeepSpeed's `DistributedAttention` trades tokens
for heads with an all-to-all, so every rank holds all tokens of the pack for heads/sp heads; RoPE
and varlen attention then run on whole samples with the slice layout's `whole` (the padded pack:
its cu_seqlens and each token's global (t, h, w)), and a second all-to-all trades back.
Everything else in the model runs on the slice.

The model never sees any of this: the trainer swaps `kernels.self_attention` for the wrapper and
hands the model slice layouts.
"""
from __future__ import annotations

import dataclasses

import torch

from sora.ops.layout import PackedLayout


def init_sequence_parallel_groups(sp: int):
    """Build the sp groups (consecutive ranks) and return DeepSpeed's sequence-parallel mpu module.

    With that mpu, ZeRO-3 partitions parameters and optimizer state over all ranks (the
    sequence-data-parallel group). Gradients are averaged over every rank (the reduce-scatter path
    that sora.parallel.deepspeed_config pins); sora.train.trainer.flow_matching_loss scales the loss
    for that, so sp ranks holding slices of one pack equal one rank holding all of it.
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

    def _local(self, q, k, v, whole: PackedLayout, sections, theta):
        # q, k, v [N_padded, 1, H/sp, Dh]: all tokens of the pack, this rank's heads.
        return self.inner(q[:, 0], k[:, 0], v[:, 0], whole, sections, theta)[:, None]

    def __call__(self, q, k, v, layout: PackedLayout, sections, theta):
        """q, k, v [L, H, Dh] this rank's slice of `layout.whole` -> [L, H, Dh]."""
        if not layout.is_slice:
            raise ValueError("sequence-parallel self-attention needs a slice layout (sora.parallel.sequence)")
        lo, hi = layout.rows
        if q.shape[0] != hi - lo:
            raise ValueError(f"slice holds {q.shape[0]} tokens but its layout has rows [{lo}, {hi})")
        out = self.distributed(q[:, None], k[:, None], v[:, None], 1, None, layout.whole, sections, theta)
        return out[:, 0]


def wrap_for_sequence_parallel(dit, group) -> UlyssesSelfAttention:
    """Swap the DiT's self-attention kernel for the Ulysses wrapper."""
    wrapper = UlyssesSelfAttention(dit.kernels.self_attention, group)
    dit.kernels = dataclasses.replace(dit.kernels, self_attention=wrapper)
    return wrapper


def pack_checksum(x: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """A cheap fingerprint of a pack, compared across a sequence-parallel group in debug mode."""
    flat = x.double().flatten()
    w = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=x.device)
    return torch.stack([(flat * w).sum(), cu_seqlens.double().sum(), x.new_tensor(flat.numel(), dtype=torch.float64)])
