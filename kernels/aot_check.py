"""Compile every Triton kernel ahead of time for Hopper (sm_90a), no GPU needed, and report resources.

    python -m kernels.aot_check            # one representative config per kernel (about a minute)
    python -m kernels.aot_check --all      # every autotune config, several head dims
    python -m kernels.aot_check --json OUT
    python -m kernels.aot_check --only adaln   # kernels whose label contains "adaln"

For each (kernel, constexprs, config) it reports shared memory, registers and spills (ptxas -v on
the generated PTX) and whether the matrix products use Hopper's wgmma. A config whose shared
memory exceeds the chip's per-block limit is flagged: the autotuner drops it at run time; a
kernel/key with no config that fits fails the check. Needs TRITON_INTERPRET unset.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

SMEM_LIMIT = 232448  # H100 / H200: 227 KiB of shared memory per block (opt-in)
FP32_SCALARS = {"qk_scale", "softmax_scale", "eps", "sign"}


def _signature(fn, ptr_types: dict, constexprs: dict) -> dict:
    sig = {}
    for p in fn.params:
        name = p.name
        if p.is_constexpr:
            sig[name] = "constexpr"
        elif name in ptr_types:
            sig[name] = "*" + ptr_types[name]
        else:
            sig[name] = "fp32" if name in FP32_SCALARS else "i32"
    missing = [n for n, t in sig.items() if t == "constexpr" and n not in constexprs]
    if missing:
        raise ValueError(f"{fn.fn.__name__}: constexprs missing {missing}")
    return sig


def _ptxas_binaries() -> list[str]:
    """Triton's bundled ptxas builds (newer Triton emits PTX the older one rejects: 3.9 writes
    .version 9.4, which needs its `ptxas-blackwell`), then the CUDA toolkit's."""
    import shutil

    import triton
    bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    found = [os.path.join(bundled, n) for n in ("ptxas", "ptxas-blackwell")] + [shutil.which("ptxas")]
    return [p for p in found if p and os.path.exists(p)]


def _ptxas_report(ptx: str, arch: str) -> dict:
    text, ok, used = "", False, None
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        for ptxas in _ptxas_binaries():   # the first one that accepts this PTX version
            r = subprocess.run([ptxas, f"-arch={arch}", "-v", src, "-o", os.path.join(d, "k.cubin")],
                               capture_output=True, text=True)
            text, ok, used = r.stdout + r.stderr, r.returncode == 0, os.path.basename(ptxas)
            if ok:
                break
    regs = re.search(r"Used (\d+) registers", text)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    return {"registers": int(regs.group(1)) if regs else None,
            "spill_stores": int(spill.group(1)) if spill else None,
            "spill_loads": int(spill.group(2)) if spill else None,
            "ptxas_ok": ok, "ptxas": used}


def _provenance() -> dict:
    """Where and from what the report was made (compile-only: no timing, so load does not matter)."""
    import datetime
    import platform

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "host": platform.node(), "machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU needed",
            "commit": commit or None}


def _jobs(full: bool):
    """(label, kernel, pointer dtypes, constexprs, configs) for every kernel."""
    import importlib

    import triton

    # modules, not kernels/__init__'s re-exported functions of the same names
    adaln, flash_attn, patch_embed, rope = (importlib.import_module(f"kernels.{m}")
                                            for m in ("adaln", "flash_attn", "patch_embed", "rope"))

    def cfgs(configs):
        configs = [(c.kwargs, c.num_warps, c.num_stages) for c in configs]
        return configs if full else configs[:1]

    fa_ptrs = dict(Q="bf16", K="bf16", V="bf16", O="bf16", DO="bf16", DQ="bf16", DK="bf16", DV="bf16",
                   LSE="fp32", DELTA="fp32", CU_Q="i32", CU_K="i32")
    heads = [(128, 128, False), (64, 64, True), (72, 128, False)] if full else [(128, 128, False)]
    for hd, bd, causal in heads:
        base = dict(GROUPS=2, HEAD_DIM=hd, BLOCK_D=bd, CAUSAL=causal, DOT_PREC="tf32")
        tag = f"d={hd}{' causal' if causal else ''}"
        yield f"flash fwd {tag}", flash_attn._fwd_kernel, fa_ptrs, base, cfgs(flash_attn._FWD_CONFIGS)
        yield f"flash dkdv {tag}", flash_attn._bwd_dkdv_kernel, fa_ptrs, base, cfgs(flash_attn._BWD_CONFIGS)
        dq_cfgs = [triton.Config({"BLOCK_M": c.kwargs["BLOCK_N"], "BLOCK_N": c.kwargs["BLOCK_M"]},
                                 num_warps=c.num_warps, num_stages=c.num_stages) for c in flash_attn._BWD_CONFIGS]
        yield f"flash dq {tag}", flash_attn._bwd_dq_kernel, fa_ptrs, base, cfgs(dq_cfgs)
    yield ("flash bwd preprocess", flash_attn._bwd_preprocess, fa_ptrs,
           dict(HEAD_DIM=128, BLOCK_D=128, BLOCK_T=64), [({}, 4, 1)])
    yield ("rope q+k (16,56,56)", rope._rope_kernel,
           dict(X="bf16", OUT="bf16", K="bf16", KOUT="bf16", CU="i32", GRID="i32", INV="fp32"),
           dict(D_T=16, D_H=56, D_W=56, BLOCK_P=32, HAS_K=True, INTERLEAVED=False,
                BLOCK_T=rope.BLOCK_T, BLOCK_H=rope.BLOCK_H), [({}, rope.NUM_WARPS, 1)])
    for d in (1152, 3072):
        br, bd, w = adaln._blocks(d)
        ptrs = dict(X="bf16", SHIFT="bf16", SCALE="bf16", Y="bf16", DY="bf16", DX="bf16", MEAN="fp32",
                    RSTD="fp32", DSHIFT="fp32", DSCALE="fp32", CU="i32")
        yield f"adaln fwd D={d}", adaln._adaln_fwd, ptrs, dict(BLOCK_R=br, BLOCK_D=bd), [({}, w, 1)]
        yield f"adaln bwd D={d}", adaln._adaln_bwd, ptrs, dict(BLOCK_R=br, BLOCK_D=bd), [({}, w, 1)]
    pe_ptrs = dict(LAT="bf16", W="bf16", B="bf16", OUT="bf16", X="bf16", TOK="bf16", CU="i32", GRID="i32")
    geo = dict(C=16, PT=1, PH=2, PW=2)
    pe = dict(HAS_BIAS=True, DOT_PREC="tf32", **geo)
    yield "patch embed P=64", patch_embed._embed_kernel, pe_ptrs, pe, cfgs(patch_embed._GEMM_CONFIGS)
    yield "patch unembed P=64", patch_embed._unembed_kernel, pe_ptrs, pe, cfgs(patch_embed._GEMM_CONFIGS)
    bm, bk = patch_embed._COPY_BLOCKS
    yield "patchify gather", patch_embed._gather_kernel, pe_ptrs, dict(BLOCK_M=bm, BLOCK_K=bk, **geo), [({}, 4, 1)]
    yield "unpatchify scatter", patch_embed._scatter_kernel, pe_ptrs, dict(BLOCK_M=bm, BLOCK_K=bk, **geo), [({}, 4, 1)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--all", action="store_true", help="every autotune config and several head dims")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--arch", default="90a")
    ap.add_argument("--only", default=None, help="only kernels whose label contains this text")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: interpreted kernels cannot be compiled", file=sys.stderr)
        return 2
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", int(args.arch.rstrip("a")), 64)
    rows, failed = [], []
    for label, kernel, ptrs, consts, configs in _jobs(args.all):
        if args.only and args.only not in label:
            continue
        fits = False
        for meta, warps, stages in configs:
            c = dict(consts, **meta)
            row = {"kernel": label, "config": meta, "num_warps": warps, "num_stages": stages}
            try:
                src = ASTSource(kernel, _signature(kernel, ptrs, c), constexprs=c)
                k = triton.compile(src, target=target, options={"num_warps": warps, "num_stages": stages})
                ptx = k.asm["ptx"]
                row.update(shared=k.metadata.shared, wgmma=ptx.count("wgmma.mma_async"),
                           mma_sync=ptx.count("mma.sync"), **_ptxas_report(ptx, f"sm_{args.arch}"))
                row["fits"] = row["shared"] <= SMEM_LIMIT and row["ptxas_ok"]
            except Exception as e:  # noqa: BLE001 - report every failure, keep going
                row.update(error=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}", fits=False)
            fits |= row["fits"]
            rows.append(row)
            print(f"{label:28s} {json.dumps(meta):44s} w{warps} s{stages}  " +
                  (f"smem {row['shared']:>6}  regs {row['registers']}  spills {row['spill_stores']}/"
                   f"{row['spill_loads']}  wgmma {row['wgmma']}  mma.sync {row['mma_sync']}"
                   if "error" not in row else row["error"]) + ("" if row["fits"] else "  <-- does not fit"),
                  flush=True)
        if not fits:
            failed.append(label)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"arch": f"sm_{args.arch}", "triton": triton.__version__, **_provenance(), "rows": rows}, f,
                      indent=1)
    if failed:
        print(f"no config compiles and fits for: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
