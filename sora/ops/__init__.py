"""One dispatch point per op. `select_kernels` is called once when a model is built."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from sora.ops import adaln, attention, patchify, rope
from sora.ops.backend import log_choice, resolve_backend


@dataclass(frozen=True)
class Kernels:
    attention: Callable
    rope: Callable
    adaln: Callable
    names: dict


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
