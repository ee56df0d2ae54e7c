"""First minute on a GPU: does every kernel run, forward and backward, and does a DiT train?

    SORA_AUTOTUNE=0 python benchmarks/gpu_smoke.py --out DIR          # a GPU (benchmarks/gpu_check.sh)
    TRITON_INTERPRET=1 python benchmarks/gpu_smoke.py --device cpu --tiny --out DIR   # the script itself, on CPU

1. One forward + backward of each Triton kernel at a realistic shape (bf16 on a GPU): varlen
   attention (two samples of 4096 + 1000 tokens, 16 heads of 128, and cross-attention to 300 text
   tokens, GQA), fused q+k 3-D RoPE, adaLN, fused patch embed / unembed, packed patchify; and the CUDA
   extension's ops when sora._C has them. Outputs and input gradients are compared with the
   plain-PyTorch references of sora.ops (in float32).
2. 10 AdamW steps of a small DiT on one packed batch (mixed sizes, an image among videos), on the
   `triton` backend with activation checkpointing (so backward and recompute run on the autograd
   engine's own thread) and on `auto`: the loss must be finite and fall.
Writes DIR/smoke.json (every check: ok, seconds, errors, error text) and exits 1 if any failed.
SORA_AUTOTUNE=0 launches each kernel's first config (one compile each): the full autotuning is
left to the later sections.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, sync, write_json  # noqa: E402


def rel(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def packing(grids, device):
    grid = torch.tensor(grids, dtype=torch.int32, device=device)
    cu = torch.zeros(len(grids) + 1, dtype=torch.int32, device=device)
    cu[1:] = grid.long().prod(1).cumsum(0)
    return cu, grid


def compare(name, fn, ref, inputs, bound):
    """fn and ref on the same leaves; forward output and every input gradient within `bound`."""
    outs = {}
    for which, f in (("kernel", fn), ("reference", ref)):
        leaves = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
        kw = [x.float() if x.is_floating_point() and which == "reference" else x for x in leaves]
        out = f(*kw)
        g = torch.randn_like(out) if which == "kernel" else outs["kernel"][2]
        grads = torch.autograd.grad(out, [x for x in leaves if x.requires_grad], g.to(out.dtype))
        outs[which] = (out, grads, g)
    errors = {"out": rel(outs["kernel"][0], outs["reference"][0])}
    for i, (a, b) in enumerate(zip(outs["kernel"][1], outs["reference"][1])):
        errors[f"grad{i}"] = rel(a, b)
    bad = {k: v for k, v in errors.items() if not v <= bound}
    if bad:
        raise AssertionError(f"{name}: relative errors above {bound}: {bad}")
    return errors


def kernel_checks(device, dtype, tiny):
    from kernels import adaln_modulate, flash_attn_varlen_func, patch_embed, patch_unembed
    from sora.ops import patchify as pf
    from sora.ops.adaln import adaln_modulate_torch
    from sora.ops.attention import varlen_attention_torch
    from sora.ops.patch_embed import patch_embed_torch, patch_unembed_torch
    from sora.ops.rope import IMPLEMENTATIONS as ROPE, rope_sections

    bound = 2e-2 if dtype != torch.float32 else 1e-4
    lens, heads, hd, ctx_len, width = ([40, 9], 2, 32, 7, 64) if tiny else ([4096, 1000], 16, 128, 300, 2048)
    grids = [(1, 5, 8), (1, 3, 3)] if tiny else [(4, 32, 32), (1, 25, 40)]      # 4096 and 1000 tokens
    cu, grid = packing(grids, device)
    n = int(cu[-1])
    cu_ctx = torch.tensor([0, ctx_len, 2 * ctx_len - 3], dtype=torch.int32, device=device)
    q = torch.randn(n, heads, hd, device=device, dtype=dtype)
    k, v = torch.randn_like(q), torch.randn_like(q)
    kc = torch.randn(int(cu_ctx[-1]), heads // 2, hd, device=device, dtype=dtype)   # GQA, 2 query heads per kv head
    max_q, max_c = max(lens), ctx_len
    sections = rope_sections(hd)
    x = torch.randn(n, width, device=device, dtype=dtype)
    shift, scale = torch.randn(2, width, device=device, dtype=dtype), torch.randn(2, width, device=device, dtype=dtype)
    channels, patch = (4, (1, 1, 1)) if tiny else (16, (1, 2, 2))
    p = channels * patch[0] * patch[1] * patch[2]
    pgrids = [(1, 5, 8), (1, 3, 3)] if tiny else [(4, 32, 32), (1, 25, 40)]
    pcu, pgrid = packing(pgrids, device)
    lat = torch.randn(int(pcu[-1]) * p, device=device, dtype=dtype)
    w = torch.randn(width, p, device=device, dtype=dtype) / p ** 0.5
    b = torch.randn(width, device=device, dtype=dtype)
    tok = torch.randn(int(pcu[-1]), width, device=device, dtype=dtype)
    w2 = torch.randn(p, width, device=device, dtype=dtype) / width ** 0.5

    checks = {
        "attention self causal": lambda: compare(
            "attention", lambda q, k, v: flash_attn_varlen_func(q, k, v, cu, cu, max_q, max_q, causal=True),
            lambda q, k, v: varlen_attention_torch(q, k, v, cu, cu, max_q, max_q, causal=True), [q, k, v], bound),
        "attention cross GQA": lambda: compare(
            "cross", lambda q, k, v: flash_attn_varlen_func(q, k, v, cu, cu_ctx, max_q, max_c),
            lambda q, k, v: varlen_attention_torch(q, k, v, cu, cu_ctx, max_q, max_c), [q, kc, kc.clone()], bound),
        "rope q+k triton": lambda: compare(
            "rope", lambda q, k: torch.cat(ROPE["triton"](q, k, cu, grid, sections, 10000.0), 1),
            lambda q, k: torch.cat(ROPE["torch"](q, k, cu, grid, sections, 10000.0), 1), [q, k], bound),
        "adaln triton": lambda: compare(
            "adaln", lambda x, s, c: adaln_modulate(x, s, c, cu), lambda x, s, c: adaln_modulate_torch(x, s, c, cu),
            [x, shift, scale], bound),
        "patch embed": lambda: compare(
            "patch embed", lambda l, w, b: patch_embed(l, pcu, pgrid, patch, channels, w, b),
            lambda l, w, b: patch_embed_torch(l, pcu, pgrid, patch, channels, w, b), [lat, w, b], bound),
        "patch unembed": lambda: compare(
            "patch unembed", lambda t, w: patch_unembed(t, pcu, pgrid, patch, channels, w),
            lambda t, w: patch_unembed_torch(t, pcu, pgrid, patch, channels, w), [tok, w2], bound),
        "patchify triton": lambda: compare(
            "patchify", lambda l: pf.PATCHIFY_IMPLEMENTATIONS["triton"](l, pcu, pgrid, patch, channels),
            lambda l: pf.patchify_packed_torch(l, pcu, pgrid, patch, channels), [lat], 0.0),
    }
    if device.startswith("cuda"):                       # the CUDA extension, when this build has it
        checks["rope q+k cuda"] = lambda: compare(
            "rope cuda", lambda q, k: torch.cat(ROPE["cuda"](q, k, cu, grid, sections, 10000.0), 1),
            lambda q, k: torch.cat(ROPE["torch"](q, k, cu, grid, sections, 10000.0), 1), [q, k], bound)
        checks["patchify cuda"] = lambda: compare(
            "patchify cuda", lambda l: pf.PATCHIFY_IMPLEMENTATIONS["cuda"](l, pcu, pgrid, patch, channels),
            lambda l: pf.patchify_packed_torch(l, pcu, pgrid, patch, channels), [lat], 0.0)
    return checks


def dit_steps(backend, device, dtype, tiny, steps=10):
    """`steps` AdamW steps of a small DiT on one fixed packed batch: losses, step seconds after the first."""
    from sora.models.dit import DiT
    torch.manual_seed(0)
    width, depth, heads, channels, text_dim = (64, 2, 2, 4, 32) if tiny else (512, 4, 8, 16, 256)
    patch = (1, 2, 2)
    model = DiT(channels, patch, width, depth, heads, text_dim, checkpointing=backend == "triton", backend=backend,
                device=device).to(device, dtype).train()
    grids = [(1, 2, 3), (3, 4, 4), (1, 1, 5)] if tiny else [(5, 16, 24), (9, 12, 16), (1, 32, 32)]  # token grids
    cu, grid = packing(grids, device)
    n, p = int(cu[-1]), channels * patch[0] * patch[1] * patch[2]
    lens = [2, 5, 3] if tiny else [40, 77, 12]
    cu_ctx = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32, device=device)
    x0 = torch.randn(n * p, device=device, dtype=dtype)                       # packed latents [N*P]
    noise = torch.randn_like(x0)
    t = torch.rand(len(grids), device=device)
    sid = torch.repeat_interleave(torch.arange(len(grids), device=device), (cu[1:] - cu[:-1]).long() * p)
    xt = (1 - t[sid]) * x0 + t[sid] * noise
    ctx = torch.randn(int(cu_ctx[-1]), text_dim, device=device, dtype=dtype)
    layout = model.kernels.layout(cu, grid)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses, seconds = [], []
    for _ in range(steps):
        sync(device)
        t0 = time.perf_counter()
        pred = model(xt, layout, t.to(dtype), ctx, cu_ctx, given=torch.zeros(n, dtype=torch.bool, device=device))
        loss = F.mse_loss(pred.float(), (noise - x0).float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(device)
        seconds.append(time.perf_counter() - t0)
        losses.append(loss.item())
    ok = all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    if not ok:
        raise AssertionError(f"{backend}: loss not finite or not falling over {steps} steps: {losses}")
    return {"backends": model.kernels.names, "losses": losses, "tokens": n,
            "first_step_s": seconds[0], "median_step_s_after_first": sorted(seconds[1:])[len(seconds[1:]) // 2]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="small shapes (checking this script on a CPU)")
    ap.add_argument("--steps", type=int, default=10, help="DiT training steps per backend")
    ap.add_argument("--out", default="benchmarks/results/gpu")
    a = ap.parse_args(argv)
    dtype = torch.bfloat16 if a.device.startswith("cuda") else torch.float32
    result = {"env": environment(a.device), "dtype": str(dtype), "checks": []}
    steps = {f"dit {a.steps} steps {b}": (lambda b=b: dit_steps(b, a.device, dtype, a.tiny, a.steps))
             for b in ("triton", "auto")}
    for name, fn in {**kernel_checks(a.device, dtype, a.tiny), **steps}.items():
        t0 = time.perf_counter()
        row = {"check": name}
        try:
            row.update(ok=True, result=fn())
        except Exception as e:  # noqa: BLE001 - every check runs and is recorded
            row.update(ok=False, error=f"{type(e).__name__}: {e}"[:2000], trace=traceback.format_exc()[-3000:])
        row["seconds"] = round(time.perf_counter() - t0, 2)
        result["checks"].append(row)
        print(f"{'ok  ' if row['ok'] else 'FAIL'} {name:28s} {row['seconds']:7.2f}s  "
              f"{json.dumps(row.get('result', row.get('error')), default=str)[:160]}", flush=True)
    result["all_ok"] = all(r["ok"] for r in result["checks"])
    write_json(Path(a.out) / "smoke.json", result)
    return 0 if result["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
