"""One dispatch point per op. `select_kernels` is called once when a model is built."""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

from sora.ops import adaln, attention, patchify, rope
from sora.ops.backend import BackendUnavailable, log, log_choice, resolve_backend


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
    """Backends for the model's ops on `device` ("cpu", "cuda", "cuda:1", ...).

    A named backend serves every op it implements; an op it lacks (attention has no `cpp`, say)
    takes what `auto` would, and the log says so. A backend serving no op here is an error.
    """
    ops = {"attention": attention.IMPLEMENTATIONS, "rope": rope.IMPLEMENTATIONS, "adaln": adaln.IMPLEMENTATIONS}
    names, fallbacks, errors = {}, [], []
    for op, impls in ops.items():
        try:
            names[op] = resolve_backend(op, impls, backend, configured, device)
        except BackendUnavailable as e:
            if "unknown kernel backend" in str(e):
                raise
            errors.append(e)
            names[op] = resolve_backend(op, impls, "auto", None, device)
            fallbacks.append(op)
    if len(errors) == len(ops):
        raise errors[0]
    if fallbacks:
        log.info("the chosen kernel backend has no %s here: %s", ", ".join(fallbacks), "; ".join(str(e) for e in errors))
    log_choice(names)
    return Kernels(attention=attention.IMPLEMENTATIONS[names["attention"]],
                   rope=rope.IMPLEMENTATIONS[names["rope"]],
                   adaln=adaln.IMPLEMENTATIONS[names["adaln"]],
                   names=names)
