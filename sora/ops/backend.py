"""Kernel backend resolution: explicit argument > SORA_KERNEL_BACKEND env > config > auto.

The choice is made once, when the model is built, and stored on the module (never by
rewriting module globals). Each op module registers the backends it has in `IMPLEMENTATIONS`.
"""
from __future__ import annotations

import logging
import os

log = logging.getLogger("sora.ops")

KNOWN_BACKENDS = ("torch", "triton", "cuda", "cpp", "flash_attn")


class BackendUnavailable(RuntimeError):
    pass


def resolve_backend(op: str, implementations: dict, explicit: str | None = None,
                    configured: str | None = None, device: str = "cpu") -> str:
    """Pick the backend for one op. `implementations` maps backend name -> callable or None."""
    choice = explicit or os.environ.get("SORA_KERNEL_BACKEND") or configured or "auto"
    if choice == "auto":
        # Fastest available on the device; the plain-torch reference on CPU.
        order = ("flash_attn", "cuda", "triton") if device.startswith("cuda") else ("cpp",)
        for name in order:
            if implementations.get(name) is not None:
                return name
        return "torch"
    if choice not in KNOWN_BACKENDS:
        raise BackendUnavailable(f"unknown kernel backend '{choice}' for op '{op}'; known: {', '.join(KNOWN_BACKENDS)}")
    if implementations.get(choice) is None:
        have = [k for k, v in implementations.items() if v is not None]
        raise BackendUnavailable(f"kernel backend '{choice}' is not available for op '{op}' here; available: {', '.join(have)}")
    return choice


def log_choice(choices: dict[str, str]) -> None:
    log.info("kernel backends: %s", ", ".join(f"{op}={b}" for op, b in sorted(choices.items())))
