"""One dispatch point per op. `select_kernels` is called once when a model is built."""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

from sora.ops import adaln, attention, patchify, rope
from sora.ops.backend import log_choice, resolve_backend


@dataclass(frozen=True)
class Kernels:
    attention: Callable
    rope: Callable
    adaln: Callable
    names: dict
    # RoPE on q and k, then attention over whole samples. One callable so that sequence
    # parallelism can wrap both: after its all-to-all every rank holds whole samples.
    self_attention: Callable | None = None

    def __post_init__(self):
        if self.self_attention is None:
            object.__setattr__(self, "self_attention", partial(rope_then_attention, self.rope, self.attention))


def rope_then_attention(rope_fn, attention_fn, q, k, v, cu_seqlens, max_seqlen, grid, sections, theta):
    """q, k, v [N, H, Dh] of whole samples -> [N, H, Dh]."""
    q = rope_fn(q, cu_seqlens, grid, sections, theta)
    k = rope_fn(k, cu_seqlens, grid, sections, theta)
    return attention_fn(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen)


def select_kernels(backend: str | None = None, configured: str | None = None, device: str = "cpu") -> Kernels:
    names = {
        "attention": resolve_backend("attention", attention.IMPLEMENTATIONS, backend, configured, device),
        "rope": resolve_backend("rope", rope.IMPLEMENTATIONS, backend, configured, device),
        "adaln": resolve_backend("adaln", adaln.IMPLEMENTATIONS, backend, configured, device),
    }
    log_choice(names)
    return Kernels(attention=attention.IMPLEMENTATIONS[names["attention"]],
                   rope=rope.IMPLEMENTATIONS[names["rope"]],
                   adaln=adaln.IMPLEMENTATIONS[names["adaln"]],
                   names=names)
