"""One set of shape rules (sora/shapes.py): config validation, the data pipeline, the VAE and inference
agree on which (frames, height, width) are valid, and on the token grid they make."""
import math

import numpy as np
import pytest
import torch

from sora.config import ConfigError, load_config
from sora.data.pipeline import prepare_sample
from sora.data.shards import SkipStats
from sora.inference import VideoGenerator
from sora.models.t2v import TextToVideo
from sora.models.vae import CausalVAE
from sora.shapes import ShapeRules

ROOT = __file__.rsplit("/tests/", 1)[0]

RULE_SETS = {                                   # (vae.ft, vae.fh, model.patch)
    "ft2-pt1": (2, 4, (1, 2, 2)),
    "ft2-pt2": (2, 4, (2, 2, 2)),               # images (1 frame) make no token
    "ft4-pt1": (4, 4, (1, 1, 2)),
}
SHAPES = [(1, 16, 16), (1, 8, 24), (3, 16, 16), (5, 16, 24), (9, 24, 16), (13, 8, 8), (4, 16, 16),
          (5, 12, 16), (5, 16, 20), (2, 8, 8), (17, 16, 32)]


def _config(ft, fh, patch, *more):
    return load_config(f"{ROOT}/configs/demo.yaml", [
        f"vae.ft={ft}", f"vae.fh={fh}", f"model.patch={list(patch)}", "vae.channels=8", "model.depth=1",
        "model.width=48", "model.heads=4", "text.dim=32", "text.layers=1", "diffusion.first_frame_prob=0",
        "sample.first_frame=joint", "data.fps=0", "data.max_frames=33", "data.max_tokens_per_sample=4096",
        "data.tokens_per_batch=4096", "sample.sizes=[]", *more])


@pytest.fixture(scope="module")
def generators():
    """A tiny random model + VAE per rule set: inference's own checks and token grids are what is tested."""
    out = {}
    for name, (ft, fh, patch) in RULE_SETS.items():
        cfg = _config(ft, fh, patch)
        torch.manual_seed(0)
        vae = CausalVAE(8, cfg.vae.latent_channels, ft, fh).eval()
        out[name] = VideoGenerator(cfg, TextToVideo(cfg), vae)
    return out


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("rules_name", RULE_SETS)
def test_config_pipeline_vae_and_inference_agree(rules_name, shape, generators):
    ft, fh, patch = RULE_SETS[rules_name]
    rules = ShapeRules(ft, fh, patch)
    frames, height, width = shape
    valid = rules.problem(*shape) is None
    # the rule itself, written out: 1 + ft*k frames, latent frames a multiple of pt, sides in tokens
    lt = (frames - 1) // ft + 1
    assert valid == ((frames - 1) % ft == 0 and lt % patch[0] == 0 and height % (fh * patch[1]) == 0
                     and width % (fh * patch[2]) == 0)

    # config: sample.sizes accepts exactly the valid shapes, naming the entry otherwise
    if valid:
        _config(ft, fh, patch, f"sample.sizes=[{list(shape)}]")
    else:
        with pytest.raises(ConfigError, match=r"sample\.sizes\[0\]"):
            _config(ft, fh, patch, f"sample.sizes=[{list(shape)}]")

    # inference: refuses exactly the invalid shapes; a valid one comes back at that shape
    gen = generators[rules_name]
    if valid:
        video = gen.generate(["a red circle moving left"], *shape, steps=1)[0]
        assert video.shape == (frames, height, width, 3)
    else:
        with pytest.raises(ConfigError, match="--frames|--height"):
            gen.generate(["a red circle moving left"], *shape, steps=1)

    # pipeline: a valid shape is trained as it is; anything else is snapped to a shape all accept
    cfg = gen.cfg
    clip = np.random.default_rng(0).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
    stats = SkipStats()
    prepared = prepare_sample(clip, 8.0, "k", cfg.data, rules, stats)
    if valid:
        assert prepared[0].shape == (3, *shape)
    if prepared is not None:
        got = tuple(prepared[0].shape[1:])
        assert rules.problem(*got) is None and got[0] <= frames and got[1] <= height and got[2] <= width
        gen.check_size(*got)
        _config(ft, fh, patch, f"sample.sizes=[{list(got)}]")
    else:                                                   # only when no valid shape fits inside
        assert stats.as_dict() == {"too_small": 1}
        assert rules.latent_frames(frames) < patch[0] or height < fh * patch[1] or width < fh * patch[2]

    # VAE: takes the valid shapes; its latent cut into patches is the token grid the others count
    if valid:
        with torch.no_grad():
            z = gen.vae.encode(torch.zeros(1, 3, *shape))
        assert tuple(z.shape[1:]) == gen.vae.latent_shape(*shape)
        grid = tuple(s // p for s, p in zip(z.shape[2:], patch))
        assert grid == rules.grid(*shape) and math.prod(grid) == rules.tokens(*shape) > 0
    elif (frames - 1) % ft or height % fh or width % fh:   # the VAE's own part of the rule
        with pytest.raises(ValueError, match="frames x height x width"):
            gen.vae.encode(torch.zeros(1, 3, *shape))


def test_config_refuses_images_with_a_temporal_patch():
    with pytest.raises(ConfigError, match="data.image_ratio"):
        _config(2, 4, (2, 2, 2), "data.image_ratio=0.2")
    _config(2, 4, (2, 2, 2), "data.image_ratio=0")               # videos only: fine
    with pytest.raises(ConfigError, match="data.max_frames"):
        _config(2, 4, (2, 2, 2), "data.max_frames=1")            # no clip could make a token


def test_fit_snaps_and_caps_keeping_aspect():
    r = ShapeRules(2, 4, (1, 2, 2))
    assert r.fit(10, 50, 70, 17, 10_000) == (9, 48, 64)            # 1 + ft*k frames, sides of whole tokens
    assert r.fit(1, 32, 64, 17, 10_000) == (1, 32, 64)
    assert r.fit(33, 32, 32, 17, 10_000) == (17, 32, 32)           # max_frames
    t, h, w = r.fit(17, 256, 512, 17, 300)                          # space shrinks first, aspect kept
    assert r.tokens(t, h, w) <= 300 and abs(w / h - 2) < 0.25 and t == 17
    assert r.fit(17, 8, 8, 17, 4) == (7, 8, 8)                      # then time: 4 latent frames of 1 token
    assert r.fit(5, 4, 4, 17, 100) is None                          # no whole token
    r2 = ShapeRules(2, 4, (2, 2, 2))
    assert r2.fit(9, 16, 16, 17, 10_000) == (7, 16, 16)             # 5 latent frames -> 4 (two temporal patches)
    assert r2.fit(1, 16, 16, 17, 10_000) is None                    # an image: no temporal patch
    assert r2.fit(9, 8, 8, 17, 1) == (3, 8, 8)                      # 1 token: one temporal patch, 2 latent frames


def test_fit_latent_cuts_time_and_crops_to_whole_patches():
    r = ShapeRules(2, 4, (2, 2, 2))
    assert r.fit_latent(5, 5, 7, 17, 10_000) == (4, 4, 6)          # whole patches in every dimension
    assert r.fit_latent(9, 4, 4, 9, 10_000) == (4, 4, 4)           # max_frames 9 -> 5 latent frames -> 4
    assert r.fit_latent(8, 4, 4, 17, 12) == (6, 4, 4)               # 4 tokens per temporal patch: 3 fit
    assert r.fit_latent(1, 4, 4, 17, 100) is None and r.fit_latent(4, 1, 4, 17, 100) is None
    assert r.fit_latent(4, 4, 4, 17, 3) is None                     # one temporal patch is over budget
