"""nvcc flags of sora._C's CUDA kernels: one definition for setup.py and tests/test_csrc.py.

Cubins for SORA_CUDA_ARCHS (default 80;90a;100;120: A100, H100/H200, B200/B300 (sm_100 cubins
run on sm_103), RTX 50xx / RTX PRO 6000; those the toolkit cannot target are dropped, with a
message) plus PTX for SORA_CUDA_PTX (default 90): a GPU with no matching cubin (a newer chip, or
sm_100/120 when the toolkit predates them) JIT-compiles that PTX at load instead of failing to load.
The PTX is for a plain architecture: "a" variants (90a) only run on their own chip.
Plain Python (no torch): setup.py imports it before torch's build helpers.
"""
from __future__ import annotations

import re
import subprocess

DEFAULT_ARCHS = "80;90a;100;120"
DEFAULT_PTX = "90"
# no --use_fast_math: RoPE needs accurate sincosf/powf for large positions
BASE = ["-O3", "-std=c++17", "-lineinfo", "--expt-relaxed-constexpr"]


def _split(spec: str) -> list[str]:
    return [a.strip() for a in spec.replace(",", ";").split(";") if a.strip()]


def toolkit_archs(nvcc: str) -> set[str] | None:
    """Architectures (sm numbers, e.g. "90") this nvcc can target; None if it cannot say."""
    try:
        out = subprocess.run([nvcc, "--list-gpu-code"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return set(re.findall(r"sm_(\d+)", out))


def resolve(environ, supported: set[str] | None, log=print) -> tuple[list[str], str]:
    """(cubin architectures, PTX architecture) from SORA_CUDA_ARCHS / SORA_CUDA_PTX; default archs
    the toolkit does not know are dropped (an explicit list is kept as given: nvcc then says why)."""
    explicit = "SORA_CUDA_ARCHS" in environ
    archs = _split(environ.get("SORA_CUDA_ARCHS", DEFAULT_ARCHS))
    if not explicit and supported is not None:
        dropped = [a for a in archs if a.rstrip("af") not in supported]
        if dropped:
            log(f"sora: this CUDA toolkit cannot build sm_{', sm_'.join(dropped)}: those GPUs use the "
                f"compute_{environ.get('SORA_CUDA_PTX', DEFAULT_PTX)} PTX instead (JIT at load)")
        archs = [a for a in archs if a not in dropped]
    ptx = environ.get("SORA_CUDA_PTX", DEFAULT_PTX).strip()
    if ptx.endswith(("a", "f")):
        raise ValueError(f"SORA_CUDA_PTX={ptx}: PTX for an arch-specific target runs only on that chip; "
                         f"give a plain one (e.g. {ptx.rstrip('af')})")
    if not archs and not ptx:
        raise ValueError("SORA_CUDA_ARCHS and SORA_CUDA_PTX are both empty: nothing to build")
    return archs, ptx


def gencode(archs: list[str], ptx: str) -> list[str]:
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    return flags + ([f"-gencode=arch=compute_{ptx},code=compute_{ptx}"] if ptx else [])


def arch_token(archs: list[str], ptx: str) -> str:
    """What sora._C.CUDA_ARCHS reports, e.g. 80_90a_100_120_ptx90 (a C identifier-ish token)."""
    return "_".join(archs + ([f"ptx{ptx}"] if ptx else []))
