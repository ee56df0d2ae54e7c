"""Shared bits of the Triton kernels: interpreter switch, launchers, packed-sample lookup."""
from __future__ import annotations

import contextvars
import os

import torch
import triton
import triton.language as tl
from triton import knobs

# Triton decides at decoration time whether a kernel is interpreted; read it the same way.
INTERPRET = bool(knobs.runtime.interpret)


# Tests set this to NaN: every output buffer is then poisoned, so an element a kernel forgets to
# write fails the comparison instead of passing on leftover memory.
POISON: float | None = None


def empty_like(t: torch.Tensor, **kw) -> torch.Tensor:
    return torch.empty_like(t, **kw) if POISON is None else torch.full_like(t, POISON, **kw)


def empty(*shape, **kw) -> torch.Tensor:
    return torch.empty(*shape, **kw) if POISON is None else torch.full(shape, POISON, **kw)


# SORA_AUTOTUNE=0: every tuned kernel launches with its first config, untimed: one compile per
# kernel instead of one per config (a GPU smoke test in seconds; the configs' order is their rank).
AUTOTUNE = os.environ.get("SORA_AUTOTUNE", "1") != "0"


def tuned(kernel, configs, key, interp_meta: dict):
    """Autotuned launcher on a GPU; fixed small blocks under the CPU interpreter (no timers there).

    Returns launch(grid_fn, *args, **kwargs) where grid_fn takes the meta-parameter dict.
    Configs that do not fit the chip (shared memory, registers) are dropped by the autotuner.
    """
    if INTERPRET or not AUTOTUNE:
        first = configs[0]
        fixed = dict(interp_meta) if INTERPRET else dict(first.kwargs, num_warps=first.num_warps,
                                                          num_stages=first.num_stages)

        def launch(grid_fn, *args, **kwargs):
            ensure_allocator()
            meta = dict(fixed, **kwargs)
            return kernel[grid_fn(meta)](*args, **meta)
    else:
        auto = triton.autotune(configs=configs, key=key)(kernel)

        def launch(grid_fn, *args, **kwargs):
            ensure_allocator()
            return auto[grid_fn](*args, **kwargs)
    return launch


def launch(kernel, grid, *args, **kwargs):
    """kernel[grid](*args, **kwargs), the way every untuned kernel is launched: allocator first."""
    ensure_allocator()
    return kernel[grid](*args, **kwargs)


# Triton's launch-time global scratch (device-side TMA descriptors need 128 B per program).
# triton.set_allocator stores the allocator in a ContextVar (Triton >= 3.5; 3.4 kept one for the
# process), so a thread that never set it has none: PyTorch's autograd engine runs CUDA backward,
# and the forward that activation checkpointing recomputes, on its own device threads. Hence every
# launch above sets it in the calling thread (once per thread: the flag is a ContextVar too).
_ALLOCATOR_SET_HERE = contextvars.ContextVar("sora_triton_allocator_set", default=False)


def scratch_allocator(size: int, alignment: int, stream) -> torch.Tensor:
    # On the current CUDA device: the one Triton launches on. The caching allocator aligns to 512 B.
    return torch.empty(size, dtype=torch.int8, device="cuda")


def ensure_allocator() -> None:
    """Make Triton's scratch allocator the one launches in this thread (context) see."""
    if not _ALLOCATOR_SET_HERE.get():
        triton.set_allocator(scratch_allocator)
        _ALLOCATOR_SET_HERE.set(True)


# Value checks of cu_seqlens / grid read device memory back to the host (a sync per call):
# always on CPU, on GPUs only with SORA_KERNEL_CHECKS=1. Shapes and dtypes are always checked.
VALIDATE_ON_GPU = os.environ.get("SORA_KERNEL_CHECKS", "0") == "1"


def validate_values(t: torch.Tensor) -> bool:
    return t.device.type != "cuda" or VALIDATE_ON_GPU


def tma_ready(t: torch.Tensor) -> torch.Tensor:
    """t with 16-byte aligned base and leading strides (TMA's rule), copying only when needed."""
    es = t.element_size()
    if t.stride(-1) == 1 and t.data_ptr() % 16 == 0 and all(st * es % 16 == 0 for st in t.stride()[:-1]):
        return t
    return t.contiguous()


def check_cu_seqlens(name: str, cu: torch.Tensor, total: int, device) -> None:
    if not isinstance(cu, torch.Tensor) or cu.dtype != torch.int32 or cu.dim() != 1 or cu.numel() < 2:
        got = (cu.dtype, tuple(cu.shape)) if isinstance(cu, torch.Tensor) else type(cu)
        raise ValueError(f"{name} must be a 1-D int32 tensor with B+1 >= 2 entries, got {got}")
    if cu.device != device:
        raise ValueError(f"{name} is on {cu.device} but the data is on {device}")
    if validate_values(cu) and (int(cu[0]) != 0 or int(cu[-1]) != total or bool((cu[1:] < cu[:-1]).any())):
        raise ValueError(f"{name} must start at 0, be non-decreasing and end at {total}, got {cu.tolist()}")


@triton.jit
def sample_of(CU, tok, n_samples):
    """Sample index of packed token(s) `tok`: the largest s < n_samples with cu[s] <= tok.

    Vectorised binary search over cu_seqlens (empty samples are skipped correctly).
    """
    lo = tok * 0
    hi = lo + n_samples - 1
    span = n_samples
    while span > 1:  # ceil(log2(B)) + 1 rounds
        mid = (lo + hi + 1) // 2
        go = tl.load(CU + mid) <= tok
        lo = tl.where(go, mid, lo)
        hi = tl.where(go, hi, mid - 1)
        span = (span + 1) // 2  # bounds hi - lo + 1 from above
    return lo
