"""The compiled kernels (csrc/ -> `sora._C`), if built: registers torch.ops.sora.{rope, patchify,
unpatchify, packing_index} for CPU tensors (the `cpp` backend) and, in a CUDA build, for CUDA
tensors (the `cuda` backend).

Import never fails: without the extension AVAILABLE is False, the op modules register None for
`cpp`/`cuda`, and `auto` falls back to the other backends. Whether it loaded is logged once.
"""
from __future__ import annotations

import logging

import torch

log = logging.getLogger("sora.ops")

AVAILABLE = False     # sora._C imported: CPU kernels registered
WITH_CUDA = False     # ... and built with the CUDA kernels
CUDA_ARCHS = ""
REASON = ""           # why not, when not

try:
    from sora import _C  # noqa: F401  (loading the library runs its TORCH_LIBRARY registrations)
    AVAILABLE = True
    WITH_CUDA = bool(_C.WITH_CUDA)
    CUDA_ARCHS = str(_C.CUDA_ARCHS)
except Exception as e:  # noqa: BLE001 - not built, or built against another torch
    REASON = f"{type(e).__name__}: {e}"

OPS = ("rope", "patchify", "unpatchify", "packing_index")

if AVAILABLE:
    log.info("sora._C loaded: %s served by backend 'cpp' on CPU tensors, %s", ", ".join(OPS),
             f"'cuda' on CUDA tensors (sm {CUDA_ARCHS})" if WITH_CUDA else "no CUDA kernels in this build")
else:
    log.info("sora._C not available (%s): %s served by the torch (or triton) backends", REASON, ", ".join(OPS))


def ops():
    """torch.ops.sora (only meaningful when AVAILABLE)."""
    return torch.ops.sora


def backend_for(x: torch.Tensor, backend: str) -> None:
    """The `cpp` backend takes CPU tensors, `cuda` CUDA tensors; say so instead of mis-dispatching."""
    want = "cpu" if backend == "cpp" else "cuda"
    if x.device.type != want:
        raise ValueError(f"kernel backend '{backend}' runs on {want} tensors; got a tensor on {x.device}")


def for_backend(backend: str, fn):
    """fn when this build serves `backend` ('cpp' or 'cuda'), else None (not available)."""
    if backend == "cpp":
        return fn if AVAILABLE else None
    if backend == "cuda":
        return fn if WITH_CUDA else None
    raise ValueError(backend)
