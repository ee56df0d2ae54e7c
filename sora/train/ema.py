"""EMA of the weights that lives where the weights live.

Under ZeRO-3 each rank keeps the EMA of its own parameter partition (`ds_tensor`), so the EMA is
sharded exactly like the parameters; `full_state` gathers it only for export.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def _local(p: torch.Tensor) -> torch.Tensor:
    return p.ds_tensor if hasattr(p, "ds_tensor") else p.data


class ShardedEMA:
    def __init__(self, named_params, decay: float):
        self.decay = decay
        self.names, self.params = zip(*[(n, p) for n, p in named_params])
        self.shadow = [_local(p).detach().clone().float() for p in self.params]

    @torch.no_grad()
    def update(self, step: int) -> None:
        # Warm-up so early EMA is not dominated by the random init.
        d = min(self.decay, (1 + step) / (10 + step))
        for s, p in zip(self.shadow, self.params):
            s.lerp_(_local(p).float(), 1 - d)

    def load_shadow(self, shadow: list[torch.Tensor]) -> None:
        for s, saved in zip(self.shadow, shadow):
            s.copy_(saved)

    @torch.no_grad()
    def gathered(self):
        """(name, full EMA weight) one parameter at a time, on every rank (a collective under
        ZeRO-3: every rank must iterate to the end). Holds one parameter beyond what the caller keeps."""
        for name, p, s in zip(self.names, self.params, self.shadow):
            if hasattr(p, "ds_tensor"):
                parts = [torch.empty_like(s) for _ in range(dist.get_world_size())]
                dist.all_gather(parts, s)
                yield name, torch.cat(parts)[: p.ds_numel].view(p.ds_shape).clone()
            else:
                yield name, s.clone()

    def full_state(self) -> dict[str, torch.Tensor]:
        """Full EMA weights on every rank (collective under ZeRO-3)."""
        return dict(self.gathered())
