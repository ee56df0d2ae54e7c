"""csrc/: the compiled kernels (sora._C) against the plain-PyTorch references in sora/ops.

- Every .cu file compiles with the machine's nvcc with the build's flags (csrc/nvcc_flags.py: cubins
  for sm_80/90a/100/120, compute_90 PTX), warnings as errors, and the objects hold those targets;
  the CUDA half of csrc/bindings.cpp compiles against torch's headers and links against them, so a
  declaration in sora_kernels.h that no .cu defines with its signature fails. Without nvcc these
  skip, saying so, except in CI (CI=true), where they fail (tests/required_tools.py).
- The C++ (CPU) kernels, through the `cpp` backend and its autograd.Function: forward and every
  gradient against the references on packed batches mixing images (T' = 1) and videos, lengths
  1, 17 and 129 and an empty sample, in float32, float64, bfloat16 and float16. RoPE errors are
  measured against the reference in float64: float32/float64 under fixed bounds, bf16/fp16 under
  2x the reference's own error in that dtype plus a small floor (flash-attn's rule). Patchify,
  unpatchify and the packing index are permutations / integer maps: exact.
- Bad input (wrong dtype, non-contiguous, mismatched shapes, cu_seqlens not starting at 0, not
  increasing, not matching the grid or the token count) raises a RuntimeError naming the argument.
- The fake (Meta) kernels pass torch.library.opcheck (schema, fake tensors, AOT dispatch).
- On a GPU (pytest -m gpu, skipped here), the CUDA kernels are checked the same way.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from sora.ops import _ext
from sora.ops.packing_index import sample_index, token_positions
from sora.ops.patchify import (PATCHIFY_IMPLEMENTATIONS, UNPATCHIFY_IMPLEMENTATIONS, patchify_packed_torch,
                               unpatchify_packed_torch)
from sora.ops.rope import IMPLEMENTATIONS as ROPE_IMPLEMENTATIONS
from sora.ops.rope import apply_rope_torch, rope_sections
from tests.required_tools import missing_tool

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
SKIPPED_BUILD = os.environ.get("SORA_SKIP_EXT", "0") not in ("", "0")
needs_ext = pytest.mark.skipif(not _ext.AVAILABLE, reason=f"sora._C not built ({_ext.REASON})")
HAS_GPU = torch.cuda.is_available() and _ext.WITH_CUDA
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not HAS_GPU, reason="needs a CUDA device and a CUDA build of sora._C")])]
BACKEND = {"cpu": "cpp", "cuda": "cuda"}

# (T', H', W') per sample: an image of 1 token, an image of 17, an empty sample, a video of 129,
# a small video and a wide image.
GRIDS = [(1, 1, 1), (1, 1, 17), (0, 3, 3), (3, 43, 1), (2, 3, 5), (1, 4, 6)]
FIXED_BOUND = {torch.float64: 1e-6, torch.float32: 1e-5}   # fp32 angles in both: ~1 ulp of cos/sin
LOWP_FLOOR = {torch.bfloat16: 4e-3, torch.float16: 5e-4}


def packing(grids, device="cpu"):
    grid = torch.tensor(grids, dtype=torch.int32).reshape(-1, 3)
    cu = torch.zeros(grid.shape[0] + 1, dtype=torch.int32)
    cu[1:] = grid.prod(1).cumsum(0)
    return cu.to(device), grid.to(device)


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def dtypes(device):
    return [torch.float32, torch.float64, torch.bfloat16, torch.float16] if device == "cpu" else \
        [torch.float32, torch.bfloat16, torch.float16]


# ------------------------------------------------------------------------------------- the build

def test_extension_is_built():
    """`pip install -e .` (make setup) builds sora._C unless SORA_SKIP_EXT is set."""
    if SKIPPED_BUILD:
        pytest.skip("SORA_SKIP_EXT is set: the extension was not built on purpose")
    assert _ext.AVAILABLE, f"sora._C did not import: {_ext.REASON}; rebuild with `make setup`"
    assert ROPE_IMPLEMENTATIONS["cpp"] is not None and PATCHIFY_IMPLEMENTATIONS["cpp"] is not None


sys.path.insert(0, str(CSRC))
import nvcc_flags  # noqa: E402  (csrc/nvcc_flags.py: the build's own -gencode flags)


def _nvcc() -> str:
    nvcc = shutil.which("nvcc") or shutil.which("nvcc", path="/usr/local/cuda/bin")
    if nvcc is None:
        missing_tool("nvcc not found: the CUDA sources cannot be compile-checked on this machine")
    return nvcc


@pytest.fixture(scope="module")
def cuda_objects(tmp_path_factory):
    """Each .cu compiled once with setup.py's flags (every default cubin this nvcc knows + the PTX),
    every warning an error (host and device): {stem: object path}."""
    nvcc = _nvcc()
    out = tmp_path_factory.mktemp("cuda_objects")
    archs, ptx = nvcc_flags.resolve({}, nvcc_flags.toolkit_archs(nvcc), log=lambda m: None)
    sources = sorted(glob.glob(str(CSRC / "cuda" / "*.cu")))
    assert sources, "no .cu files under csrc/cuda"

    def compile_one(src):
        obj = out / f"{Path(src).stem}.o"
        cmd = [nvcc, "-c", *nvcc_flags.BASE, *nvcc_flags.gencode(archs, ptx), "-Werror", "all-warnings",
               "-Xcompiler", "-Wall,-Wextra,-Werror", f"-I{CSRC}", src, "-o", str(obj)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        return src, obj, r.returncode, r.stdout + r.stderr

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(compile_one, sources))
    failures = [f"{Path(s).name}:\n{log}" for s, _, rc, log in results if rc]
    assert not failures, "nvcc failed:\n" + "\n".join(failures)
    return {Path(s).stem: obj for s, obj, _, _ in results}, archs, ptx


@pytest.mark.slow
def test_cuda_sources_compile_with_nvcc_for_every_target(cuda_objects):
    """The default targets are cubins for sm_80, sm_90a, sm_100, sm_120 (those this nvcc knows) plus
    compute_90 PTX, which newer GPUs JIT-compile: check the objects really hold them."""
    objects, archs, ptx = cuda_objects
    assert {"80", "90a"} <= set(archs) and ptx == "90"
    import triton  # ships a cuobjdump too, for toolkits installed without it
    where = [os.path.dirname(_nvcc()), "/usr/local/cuda/bin", str(Path(triton.__file__).parent / "backends/nvidia/bin")]
    cuobjdump = shutil.which("cuobjdump", path=os.pathsep.join(where))
    if cuobjdump is None:
        missing_tool("cuobjdump not found (CUDA toolkit or Triton): cannot list the embedded cubins and PTX")
    for stem, obj in objects.items():
        listing = subprocess.run([cuobjdump, "--list-elf", "--list-ptx", str(obj)], capture_output=True,
                                 text=True, check=True).stdout
        for a in archs:
            assert f"sm_{a}." in listing, f"{stem}.cu: no sm_{a} cubin in\n{listing}"
        assert f"sm_{ptx}.ptx" in listing, f"{stem}.cu: no compute_{ptx} PTX in\n{listing}"


def _host_objects(tmp_path) -> dict[str, Path]:
    """csrc/bindings.cpp compiled with SORA_WITH_CUDA against torch's headers (the CPU wheel lacks
    one generated header of c10/cuda, stubbed here), and the C++ kernels csrc/cpu/*.cpp."""
    cxx = shutil.which("c++") or shutil.which("g++")
    cuda_inc = next((p for p in ("/usr/local/cuda/include",) if os.path.exists(f"{p}/cuda_runtime_api.h")), None)
    if cxx is None or cuda_inc is None:
        missing_tool("needs a C++ compiler and the CUDA toolkit headers")
    import sysconfig

    from torch.utils.cpp_extension import include_paths
    stub = tmp_path / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True, exist_ok=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n")
    flags = ["-std=c++20", "-c", "-fPIC", "-O0", "-fopenmp", "-Wall", "-Werror", "-Wno-unknown-pragmas",
             "-DSORA_WITH_CUDA", "-DSORA_CUDA_ARCHS=80_90a", *[f"-I{p}" for p in include_paths()],
             f"-I{tmp_path}", f"-I{cuda_inc}", f"-I{sysconfig.get_paths()['include']}", f"-I{CSRC}"]
    sources = [CSRC / "bindings.cpp", *sorted((CSRC / "cpu").glob("*.cpp"))]

    def compile_one(src):
        obj = tmp_path / f"host_{src.stem}.o"
        r = subprocess.run([cxx, *flags, str(src), "-o", str(obj)], capture_output=True, text=True)
        return src, obj, r.returncode, r.stderr

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(compile_one, sources))
    failures = [f"{s.name}:\n{err[-3000:]}" for s, _, rc, err in results if rc]
    assert not failures, "c++ failed:\n" + "\n".join(failures)
    return {s.stem: obj for s, obj, _, _ in results}


def _unresolved_sora_symbols(tmp_path, objects) -> list[str]:
    """Link the objects together (ld -r: resolve what they define for each other, run nothing) and
    list the sora:: symbols still undefined: a declaration in csrc/sora_kernels.h that no kernel
    file defines with that exact signature."""
    ld, nm = shutil.which("ld"), shutil.which("nm")
    if ld is None or nm is None:
        missing_tool("needs binutils (ld, nm)")
    linked = tmp_path / "linked.o"
    subprocess.run([ld, "-r", "-o", str(linked), *map(str, objects)], check=True, capture_output=True)
    undefined = subprocess.run([nm, "-C", "--undefined-only", str(linked)], capture_output=True, text=True,
                               check=True).stdout.splitlines()
    return [line.split(maxsplit=1)[-1] for line in undefined if "sora::" in line]


@pytest.mark.slow
def test_bindings_link_against_the_kernels(tmp_path, cuda_objects):
    """Every sora::cuda:: and sora::cpu:: function bindings.cpp (built with CUDA) calls is defined,
    with the same signature, by a .cu / .cpp object. A mismatch compiles (it reads as a new
    overload) and would only fail when the extension loads on a GPU; linking here catches it.
    Leaving rope.cu's object out shows the check can fail."""
    cuda, _, _ = cuda_objects
    host = _host_objects(tmp_path)
    assert _unresolved_sora_symbols(tmp_path, [*host.values(), *cuda.values()]) == []
    without_rope = [*host.values(), *(o for stem, o in cuda.items() if stem != "rope")]
    unresolved = _unresolved_sora_symbols(tmp_path, without_rope)
    assert any(s.startswith("sora::cuda::rope(") for s in unresolved), unresolved


def test_package_works_without_extension():
    """Without sora._C, sora.ops still imports, says why once, and auto falls back to torch."""
    code = (
        "import logging, sys; sys.modules['sora._C'] = None\n"
        "logging.basicConfig(level=logging.INFO, format='%(message)s')\n"
        "import torch\n"
        "from sora.ops import _ext, select_kernels\n"
        "from sora.ops import rope, patchify\n"
        "assert not _ext.AVAILABLE and rope.IMPLEMENTATIONS['cpp'] is None\n"
        "assert patchify.PATCHIFY_IMPLEMENTATIONS['cpp'] is None\n"
        "print('rope=' + select_kernels().names['rope'])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "rope=torch" in r.stdout
    assert r.stderr.count("sora._C not available") == 1, r.stderr


@needs_ext
def test_auto_prefers_cpp_on_cpu():
    from sora.ops.backend import resolve_backend
    assert resolve_backend("rope", ROPE_IMPLEMENTATIONS, None, None, "cpu") == "cpp"
    assert resolve_backend("rope", ROPE_IMPLEMENTATIONS, "torch", None, "cpu") == "torch"
    with pytest.raises(ValueError, match="'cuda' runs on cuda tensors"):
        _ext.backend_for(torch.randn(4, 1, 8), "cuda")


# ------------------------------------------------------------------------------------------- RoPE

ROPE_SHAPES = [  # heads, sections (head dim)
    (2, rope_sections(32)),     # (8, 12, 12): halves 4, 6, 6
    (3, rope_sections(40)),     # (10, 14, 16): odd halves 5, 7, 8
    (1, (16, 56, 56)),          # d = 128: halves all multiples of 8 (the widest vectors)
    (2, (0, 6, 10)),            # an empty time section
]


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("heads,sections", ROPE_SHAPES)
def test_rope_matches_reference(device, heads, sections):
    cu, grid = packing(GRIDS, device)
    fn = ROPE_IMPLEMENTATIONS[BACKEND[device]]
    n, d, theta = int(cu[-1]), sum(sections), 500.0
    for dtype in dtypes(device):
        x = torch.randn(n, heads, d, device=device).to(dtype).requires_grad_()
        g = torch.randn(n, heads, d, device=device).to(dtype)
        out = fn(x, None, cu, grid, sections, theta)[0]     # rope_qk with k=None: one tensor
        (dx,) = torch.autograd.grad(out, x, g)
        x64 = x.detach().double().requires_grad_()
        ref64 = apply_rope_torch(x64, cu, grid, sections, theta)
        (dref64,) = torch.autograd.grad(ref64, x64, g.double())
        assert out.dtype == dtype and out.shape == x.shape and dx.dtype == dtype
        if dtype in FIXED_BOUND:
            bound_out = bound_dx = FIXED_BOUND[dtype]
        else:  # 2x the reference's own error in this dtype, plus a floor
            xr = x.detach().requires_grad_()
            ref = apply_rope_torch(xr, cu, grid, sections, theta)
            (dref,) = torch.autograd.grad(ref, xr, g)
            bound_out = 2 * rel(ref, ref64) + LOWP_FLOOR[dtype]
            bound_dx = 2 * rel(dref, dref64) + LOWP_FLOOR[dtype]
        assert rel(out, ref64) < bound_out, (dtype, rel(out, ref64), bound_out)
        assert rel(dx, dref64) < bound_dx, (dtype, rel(dx, dref64), bound_dx)


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_rope_inverse_undoes_forward_and_big_positions(device):
    """inverse=True is the exact transpose; positions up to 300 keep fp32 angles accurate."""
    cu, grid = packing([(300, 1, 1), (1, 2, 150)], device)
    x = torch.randn(int(cu[-1]), 2, 32, device=device)
    y = torch.ops.sora.rope(x, cu, grid, [8, 12, 12], 10000.0)
    assert rel(y, apply_rope_torch(x.double(), cu, grid, (8, 12, 12), 10000.0)) < 1e-5
    back = torch.ops.sora.rope(y, cu, grid, [8, 12, 12], 10000.0, True)
    torch.testing.assert_close(back, x, rtol=1e-5, atol=1e-5)


# -------------------------------------------------------------------------------- patchify / index

PATCHES = [(1, 2, 2), (2, 1, 3), (1, 1, 1)]


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("patch", PATCHES)
@pytest.mark.parametrize("channels", [1, 3])
def test_patchify_unpatchify_match_reference(device, patch, channels):
    # grids here are *token* grids; latent sizes are grid x patch, so every grid is valid
    cu, grid = packing(GRIDS, device)
    p = channels * patch[0] * patch[1] * patch[2]
    n = int(cu[-1])
    for dtype in dtypes(device):
        lat = torch.randn(n * p, device=device).to(dtype).requires_grad_()
        tok = PATCHIFY_IMPLEMENTATIONS[BACKEND[device]](lat, cu, grid, patch, channels)
        ref = patchify_packed_torch(lat.detach(), cu, grid, patch, channels)
        assert tok.shape == (n, p) and torch.equal(tok, ref)
        g = torch.randn(n, p, device=device).to(dtype)
        (dlat,) = torch.autograd.grad(tok, lat, g)
        assert torch.equal(dlat, unpatchify_packed_torch(g, cu, grid, patch, channels))

        tok2 = torch.randn(n, p, device=device).to(dtype).requires_grad_()
        back = UNPATCHIFY_IMPLEMENTATIONS[BACKEND[device]](tok2, cu, grid, patch, channels)
        assert torch.equal(back, unpatchify_packed_torch(tok2.detach(), cu, grid, patch, channels))
        h = torch.randn(n * p, device=device).to(dtype)
        (dtok,) = torch.autograd.grad(back, tok2, h)
        assert torch.equal(dtok, patchify_packed_torch(h, cu, grid, patch, channels))


@needs_ext
def test_packed_patchify_is_per_sample_patchify():
    """The packed layout: sample b's [C, T, H, W] latent starts at cu[b] * P."""
    from sora.ops.patchify import patchify
    patch, c = (1, 2, 2), 3
    latents = [torch.randn(c, 1, 2, 34), torch.randn(c, 3, 86, 2), torch.randn(c, 2, 6, 10)]
    grids = [(1, 1, 17), (3, 43, 1), (2, 3, 5)]
    cu, grid = packing(grids)
    tok = PATCHIFY_IMPLEMENTATIONS["cpp"](torch.cat([x.reshape(-1) for x in latents]), cu, grid, patch, c)
    assert torch.equal(tok, torch.cat([patchify(x, patch) for x in latents]))


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_packing_index_matches_reference(device):
    cu, grid = packing(GRIDS + [(0, 0, 0), (1, 1, 1)], device)
    n = int(cu[-1])
    sid, pos = torch.ops.sora.packing_index(cu, grid, n)
    assert sid.dtype == pos.dtype == torch.int64
    assert torch.equal(sid, sample_index(cu, n)) and torch.equal(pos, token_positions(cu, grid))


# -------------------------------------------------------------------------------------- bad input

def bad_cases():
    cu, grid = packing([(1, 2, 3), (2, 2, 2)])              # 6 + 8 = 14 tokens
    x = torch.randn(14, 2, 8)
    s = [2, 2, 4]
    rope = torch.ops.sora.rope
    yield "x must be float32", lambda: rope(x.to(torch.int32), cu, grid, s, 10.0)
    yield "cu_seqlens must be int32", lambda: rope(x, cu.long(), grid, s, 10.0)
    yield "grid must be int32", lambda: rope(x, cu, grid.long(), s, 10.0)
    yield "x must be contiguous", lambda: rope(x.transpose(0, 1).contiguous().transpose(0, 1), cu, grid, s, 10.0)
    yield "x must be \\[N, H, D\\]", lambda: rope(x[0], cu, grid, s, 10.0)
    yield "sections .* sum to the head dim", lambda: rope(x, cu, grid, [2, 2, 2], 10.0)
    yield "sections .* even", lambda: rope(x, cu, grid, [3, 1, 4], 10.0)
    yield "grid must be \\[B, 3\\]", lambda: rope(x, cu, grid[:1], s, 10.0)
    yield "cu_seqlens must start at 0", lambda: rope(x, cu + 1, grid, s, 10.0)
    yield "non-decreasing", lambda: rope(x, torch.tensor([0, 8, 6], dtype=torch.int32), grid, s, 10.0)
    yield "sample 0: cu_seqlens gives 5", lambda: rope(x, torch.tensor([0, 5, 14], dtype=torch.int32), grid, s, 10.0)
    yield "ends at 14 but the input holds 13", lambda: rope(x[:13], cu, grid, s, 10.0)
    yield "grid\\[1\\] must be non-negative", lambda: rope(
        x[:6], torch.tensor([0, 6, 6], dtype=torch.int32), torch.tensor([[1, 2, 3], [-1, 0, 2]], dtype=torch.int32),
        s, 10.0)
    lat = torch.randn(14 * 4)
    pf, upf = torch.ops.sora.patchify, torch.ops.sora.unpatchify
    yield "latents must be float32", lambda: pf(lat.to(torch.int64), cu, grid, [1, 2, 2], 1)
    yield "latents must be 1-D", lambda: pf(lat.view(14, 4), cu, grid, [1, 2, 2], 1)
    yield "multiple of C\\*pt\\*ph\\*pw = 12", lambda: pf(lat[:-4], cu, grid, [1, 2, 2], 3)
    yield "latents must be contiguous", lambda: pf(torch.randn(14 * 8)[::2], cu, grid, [1, 2, 2], 1)
    yield "ends at 14 but the input holds 13", lambda: pf(lat[:-4], cu, grid, [1, 2, 2], 1)
    yield "patch must be three positive", lambda: pf(lat, cu, grid, [1, 0, 2], 1)
    yield "tokens must be \\[N, C\\*pt\\*ph\\*pw\\] = \\[N, 4\\]", lambda: upf(lat.view(7, 8), cu, grid, [1, 2, 2], 1)
    yield "tokens must be contiguous", lambda: upf(torch.randn(4, 14).t(), cu, grid, [1, 2, 2], 1)
    yield "total must be non-negative", lambda: torch.ops.sora.packing_index(cu, grid, -1)
    yield "cu_seqlens must be 1-D", lambda: torch.ops.sora.packing_index(cu[:1], grid, 0)


@needs_ext
@pytest.mark.parametrize("message,call", list(bad_cases()), ids=[m for m, _ in bad_cases()])
def test_bad_input_raises_clear_runtime_error(message, call):
    with pytest.raises(RuntimeError, match=message):
        call()


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA device and a CUDA build of sora._C")
def test_bad_input_cuda():
    cu, grid = packing([(1, 2, 3)], "cuda")
    with pytest.raises(RuntimeError, match="cu_seqlens must be on cuda"):
        torch.ops.sora.rope(torch.randn(6, 1, 4, device="cuda"), cu.cpu(), grid, [0, 2, 2], 10.0)
    with pytest.raises(RuntimeError, match="float64 is supported on CPU only"):
        torch.ops.sora.rope(torch.randn(6, 1, 4, device="cuda", dtype=torch.float64), cu, grid, [0, 2, 2], 10.0)
    with pytest.raises(RuntimeError, match="non-decreasing"):
        torch.ops.sora.rope(torch.randn(6, 1, 4, device="cuda"), torch.tensor([0, 7, 6], dtype=torch.int32,
                            device="cuda"), torch.tensor([[1, 1, 7], [0, 1, 1]], dtype=torch.int32, device="cuda"),
                            [0, 2, 2], 10.0)


# ------------------------------------------------------------------------------------ fake / meta

@needs_ext
def test_opcheck_fake_kernels():
    from torch.library import opcheck
    cu, grid = packing([(1, 1, 1), (1, 3, 5), (3, 2, 4)])
    n = int(cu[-1])
    opcheck(torch.ops.sora.rope.default, (torch.randn(n, 2, 32), cu, grid, [8, 12, 12], 100.0, False))
    opcheck(torch.ops.sora.patchify.default, (torch.randn(n * 8), cu, grid, [1, 2, 2], 2))
    opcheck(torch.ops.sora.unpatchify.default, (torch.randn(n, 8), cu, grid, [1, 2, 2], 2))
    opcheck(torch.ops.sora.packing_index.default, (cu, grid, n))


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_packing_index_dispatch(device):
    from sora.ops import packing_index as pi
    cu, grid = packing(GRIDS, device)
    sid, pos = pi.IMPLEMENTATIONS[BACKEND[device]](cu, grid)
    rsid, rpos = pi.IMPLEMENTATIONS["torch"](cu, grid)
    assert torch.equal(sid, rsid) and torch.equal(pos, rpos)


@needs_ext
def test_cpu_kernels_split_across_threads():
    """at::parallel_for chunks start mid-sample and at empty samples: same answers on 2 threads."""
    torch.set_num_threads(2)  # the autouse fixture sets 1 again for the next test
    cu, grid = packing(GRIDS * 12 + [(0, 1, 1)] * 3 + [(1, 1, 1)])
    n = int(cu[-1])
    x = torch.randn(n, 4, 32)
    assert rel(ROPE_IMPLEMENTATIONS["cpp"](x, None, cu, grid, (8, 12, 12), 100.0)[0],
               apply_rope_torch(x.double(), cu, grid, (8, 12, 12), 100.0)) < 1e-5
    lat = torch.randn(n * 4 * 8)
    assert torch.equal(PATCHIFY_IMPLEMENTATIONS["cpp"](lat, cu, grid, (2, 2, 2), 4),
                       patchify_packed_torch(lat, cu, grid, (2, 2, 2), 4))
    sid, pos = torch.ops.sora.packing_index(cu, grid, n)
    assert torch.equal(sid, sample_index(cu, n)) and torch.equal(pos, token_positions(cu, grid))
