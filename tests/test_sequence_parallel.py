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

from sora.ops.packing_index import token_positions
from sora.parallel.sequence import shard_rows, shard_sequence

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
    rows, positions, samples = [], [], []
    for r in range(sp):
        s = shard_sequence(cu, grid, sp, r)
        assert s.hi - s.lo == -(-n // sp)
        local = shard_rows(x, s)
        assert local.shape[0] == s.hi - s.lo and int(s.cu_seqlens[-1]) == local.shape[0]
        assert torch.all(local[s.local_real:] == 0)                        # the pad is zeros, at the end
        rows.append(local[:s.local_real])
        seg_grid = s.full_grid[s.segment_sample]
        pos = token_positions(s.cu_seqlens, seg_grid, s.segment_offset)   # global (t, h, w) of each token
        positions.append(pos[:s.local_real])
        sid = torch.repeat_interleave(s.segment_sample, (s.cu_seqlens[1:] - s.cu_seqlens[:-1]).long())
        samples.append(sid[:s.local_real])
        assert torch.all(sid[s.local_real:] == len(grids))                 # pad tokens belong to the pad sample
    assert torch.equal(torch.cat(rows), x)
    assert torch.equal(torch.cat(positions), full_pos)
    assert torch.equal(torch.cat(samples), torch.repeat_interleave(torch.arange(len(grids)), (cu[1:] - cu[:-1]).long()))
    s = shard_sequence(cu, grid, sp, 0)
    assert int(s.full_cu_seqlens[-1]) == sp * (s.hi - s.lo) and s.full_grid.shape == (len(grids) + 1, 3)


def test_bad_rank_is_refused():
    cu, grid = _pack([(1, 2, 2)])
    with pytest.raises(ValueError, match="rank 2 is outside 0..1"):
        shard_sequence(cu, grid, 2, 2)


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
