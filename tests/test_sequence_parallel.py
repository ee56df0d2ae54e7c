"""Ulysses sequence parallelism: slicing a packed sequence, and parity with one rank.

The distributed tests go through the real command line (`sora-launch local`): sp=2 on 2 ranks
logs the same loss and grad norm per step as 1 rank; dp=2 x sp=2 on 4 ranks as dp=2 on 2 ranks.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sora.ops.layout import build_layout
from sora.ops.packing_index import token_positions
from sora.parallel.sequence import padded_packing, shard_layout, shard_rows

ROOT = Path(__file__).resolve().parent.parent


def _pack(grids):
    grid = torch.tensor(grids, dtype=torch.int32)
    lens = grid.long().prod(1)
    cu = torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)]).int()
    return cu, grid


@pytest.mark.parametrize("sp", [1, 2, 3, 4])
def test_shards_cover_the_pack_once_with_global_positions(sp):
    g = torch.Generator().manual_seed(sp)
    grids = [(int(torch.randint(1, 4, (1,), generator=g)), int(torch.randint(1, 6, (1,), generator=g)),
              int(torch.randint(1, 7, (1,), generator=g))) for _ in range(5)] + [(1, 1, 1), (1, 3, 5)]
    cu, grid = _pack(grids)
    n = int(cu[-1])
    x = torch.randn(n, 3, generator=g)
    full_pos = token_positions(cu, grid)                                   # [N, 3]
    padded = build_layout(*padded_packing(cu, grid, sp))
    assert padded.num_tokens == -(-n // sp) * sp and padded.grid.shape == (len(grids) + 1, 3)
    rows, positions, samples = [], [], []
    for r in range(sp):
        s = shard_layout(padded, sp, r)
        lo, hi = s.rows
        real = max(0, min(hi, n) - lo)
        assert hi - lo == -(-n // sp) and s.whole is padded
        local = shard_rows(x, s)
        assert local.shape[0] == hi - lo and int(s.cu_seqlens[-1]) == local.shape[0] == s.num_tokens
        assert torch.all(local[real:] == 0)                                # the pad is zeros, at the end
        rows.append(local[:real])
        # the slice's positions (taken from the whole) equal those derived from its segments' offsets
        assert torch.equal(s.positions, token_positions(s.cu_seqlens, s.grid, s.offset))
        positions.append(s.positions[:real])
        sid = torch.repeat_interleave(torch.arange(s.num_segments), (s.cu_seqlens[1:] - s.cu_seqlens[:-1]).long())
        assert torch.equal(s.sample_index, sid)                            # segment of each token
        seg_sample = padded.sample_index[lo + s.cu_seqlens[:-1].long()]    # sample of each segment
        samples.append(seg_sample[sid][:real])
        assert torch.all(seg_sample[sid][real:] == len(grids))             # pad tokens belong to the pad sample
    assert torch.equal(torch.cat(rows), x)
    assert torch.equal(torch.cat(positions), full_pos)
    assert torch.equal(torch.cat(samples), torch.repeat_interleave(torch.arange(len(grids)), (cu[1:] - cu[:-1]).long()))


@pytest.mark.parametrize("backend", ["torch", "cpp", "triton"])
def test_patch_embedding_of_slices_equals_the_whole_packs_rows(backend):
    """A slice embeds exactly its rows of the whole pack (pad rows: the bias), and the slices'
    unpatchified outputs add up to the whole pack's, each filling only its own tokens' values."""
    from sora.ops import select_kernels

    kernels = select_kernels(backend=backend)
    g = torch.Generator().manual_seed(7)
    cu, grid = _pack([(1, 2, 3), (3, 2, 2), (1, 1, 1), (2, 1, 3)])
    patch, c, d = (1, 2, 2), 3, 8
    p = c * 4
    latents = torch.randn(int(cu[-1]) * p, generator=g)
    w, b = torch.randn(d, p, generator=g), torch.randn(d, generator=g)
    w2, b2 = torch.randn(p, d, generator=g), torch.randn(p, generator=g)
    whole = kernels.layout(cu, grid)
    h = kernels.patch_embed(latents, whole, patch, c, w, b)                       # [N, D]
    out = kernels.patch_unembed(h, whole, patch, c, w2, b2, latents.numel())      # [N*P]
    sp = 3
    padded = kernels.layout(*padded_packing(cu, grid, sp))
    total = torch.zeros_like(out)
    for r in range(sp):
        s = shard_layout(padded, sp, r)
        lo, hi = s.rows
        hs = kernels.patch_embed(latents, s, patch, c, w, b)
        torch.testing.assert_close(hs, torch.cat([h, b.expand(padded.num_tokens - h.shape[0], d)])[lo:hi])
        total += kernels.patch_unembed(hs, s, patch, c, w2, b2, latents.numel())
    torch.testing.assert_close(total, out)


def test_bad_rank_is_refused():
    cu, grid = _pack([(1, 2, 2)])
    with pytest.raises(ValueError, match="rank 2 is outside 0..1"):
        shard_layout(build_layout(*padded_packing(cu, grid, 2)), 2, 2)


# ---------------------------------------------------------------- through the command line

def _env():
    return dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))


def _run(*args, cwd):
    return subprocess.run([sys.executable, *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("sp")
    r = _run("-m", "sora.cli", "synth", "--out", str(root / "data"), "--clips", "16", "--heldout", "2", "--seed", "9", cwd=root)
    assert r.returncode == 0, r.stderr
    r = _run("-m", "sora.cli", "train-vae", f"{ROOT}/configs/demo-vae.yaml", f"data.path={root / 'data'}",
             f"run.dir={root / 'vae'}", "train.steps=1", "vae.channels=8", "data.shuffle_buffer=4", cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    return root


def _train(world, name, nproc, *extra):
    run = world / name
    r = _run("-m", "launcher.cli", "local", "--nproc", str(nproc), "train", f"{ROOT}/configs/demo.yaml",
             f"data.path={world / 'data'}", f"vae.run={world / 'vae'}", f"run.dir={run}", "train.steps=5",
             "run.log_every=1", "vae.channels=8", "model.depth=2", "model.width=48", "model.heads=4",
             "data.shuffle_buffer=4", "optim.warmup=2", *extra, cwd=world)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_same_curve(a, b, rel=1e-5):
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(5))
    for x, y in zip(a, b):
        assert x["tokens"] == y["tokens"]
        for key in ("loss", "grad_norm"):
            assert abs(x[key] - y[key]) <= rel * abs(x[key]), (x["step"], key, x[key], y[key])


@pytest.mark.slow
@pytest.mark.distributed
def test_sp2_matches_one_rank(world):
    one = _train(world, "sp1", 1)
    two = _train(world, "sp2", 2, "parallel.sp=2", "parallel.check_packs=true")
    _assert_same_curve(one, two)


@pytest.mark.slow
@pytest.mark.distributed
def test_dp2_sp2_on_four_ranks_matches_dp2(world):
    dp2 = _train(world, "dp2", 2)
    dp2sp2 = _train(world, "dp2sp2", 4, "parallel.sp=2", "parallel.check_packs=true")
    _assert_same_curve(dp2, dp2sp2)


@pytest.mark.slow
@pytest.mark.distributed
def test_world_not_divisible_by_sp_is_refused(world):
    r = _run("-m", "launcher.cli", "local", "--nproc", "3", "train", f"{ROOT}/configs/demo.yaml",
             f"data.path={world / 'data'}", f"vae.run={world / 'vae'}", f"run.dir={world / 'bad'}",
             "parallel.sp=2", "model.heads=4", "model.width=48", "model.depth=1", "vae.channels=8", cwd=world)
    assert r.returncode != 0
    assert "world size 3 is not divisible by sp=2" in r.stdout + r.stderr
