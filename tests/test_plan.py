"""`sora plan`: clip parsing, token counts, and the sp choice from the analytic model."""
from __future__ import annotations

import pytest

from sora.cli import main
from sora.plan import clip_tokens, parse_clip, plan


def test_parse_clip():
    c = parse_clip("60s@720p@24fps")
    assert (c.seconds, c.height, c.width, c.fps, c.frames) == (60, 720, 1280, 24, 1440)
    c = parse_clip("2.5s@640x360@8fps")
    assert (c.width, c.height, c.frames) == (640, 360, 20)
    with pytest.raises(ValueError, match="not like"):
        parse_clip("60 seconds of 720p")


def test_clip_tokens_follow_vae_and_patch():
    # 1440 frames -> 1 + 4k: 360 latent frames; 720/16 = 45, 1280/16 = 80
    n, grid = clip_tokens(parse_clip("60s@720p@24fps"), ft=4, fh=8, patch=(1, 2, 2))
    assert grid == (360, 45, 80) and n == 360 * 45 * 80
    assert clip_tokens(parse_clip("0.04s@256x256@25fps"), 4, 8, (1, 2, 2)) == (256, (1, 16, 16))  # one frame


def test_plan_picks_the_smallest_fitting_sp():
    p = plan("DiT-1B", parse_clip("20s@720p@24fps"), gpu_mem_gib=80, gpus=8)
    rows = {r["sp"]: r for r in p["rows"]}
    assert set(rows) == {1, 2, 4}                        # 12 heads and 8 GPUs allow sp 1, 2, 4
    assert rows[1]["total_gib"] > rows[2]["total_gib"] > rows[4]["total_gib"]
    assert p["sp_needed"] == min(sp for sp, r in rows.items() if r["fits"])
    small = plan("DiT-S", parse_clip("1s@256p@8fps"), gpu_mem_gib=80, gpus=1)
    assert small["sp_needed"] == 1


def test_plan_cli(capsys):
    assert main(["plan", "--size", "DiT-1B", "--clip", "60s@720p@24fps", "--gpu-mem", "80", "--gpus", "8"]) == 0
    out = capsys.readouterr().out
    assert "1,296,000 tokens per sample" in out and "sp" in out
    assert main(["plan", "--clip", "nonsense"]) == 2
