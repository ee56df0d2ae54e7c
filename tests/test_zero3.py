"""ZeRO-3 on 2 ranks (gloo) equals 1 rank processing both ranks' packs: gradients, parameters, loss;
full training and LoRA."""
import os
import subprocess
import sys

import pytest
import torch

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(nproc, out, steps=3, *extra):
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           os.path.join(ROOT, "tests", "dist_zero3_parity.py"), str(out), str(steps), *extra]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    return torch.load(out, weights_only=True)


def assert_parity(one, two):
    assert one.keys() == two.keys()
    grads = [k for k in one if k.startswith("grad/")]
    assert grads and all(one[k].abs().sum() > 0 for k in grads)
    for key in grads:  # gradients: fp32 rounding from a different reduction order only
        torch.testing.assert_close(two[key], one[key], rtol=2e-5, atol=2e-6, msg=key)
    for key in one.keys() - set(grads):
        # Adam divides by sqrt(v): a rounding-level gradient difference on a tiny gradient moves a
        # weight by up to ~1e-3 of one lr-sized step (lr = 1e-2 here), hence atol 2e-5.
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=2e-5, msg=key)


def test_zero3_two_ranks_match_one_rank(tmp_path):
    one = run(1, tmp_path / "one.pt")
    two = run(2, tmp_path / "two.pt")
    assert_parity(one, two)
    # and the run actually moved the weights
    assert not torch.allclose(one["param0/dit.patch_embed.weight"], one["param2/dit.patch_embed.weight"])


def test_zero3_lora_trains_only_adapters_and_two_ranks_match_one_rank(tmp_path):
    """ZeRO-3 partitions and gathers the frozen base weights like any others, but only the
    adapters get gradients and move; the base stays bitwise what it was, on 1 and on 2 ranks."""
    steps = 2
    one = run(1, tmp_path / "one.pt", steps, "lora")
    two = run(2, tmp_path / "two.pt", steps, "lora")
    names = {k.split("/", 1)[1] for k in one if k.startswith("init/")}
    adapters = {n for n in names if ".lora_A." in n or ".lora_B." in n}
    assert adapters and names - adapters
    assert {k for k in one if k.startswith("grad/")} == {f"grad/{n}" for n in adapters}
    for rec in one, two:
        for n in names - adapters:
            assert all(torch.equal(rec[f"param{s}/{n}"], rec[f"init/{n}"]) for s in range(steps)), n
        for n in adapters:
            assert not torch.equal(rec[f"param{steps - 1}/{n}"], rec[f"init/{n}"]), n
    assert_parity(one, two)
