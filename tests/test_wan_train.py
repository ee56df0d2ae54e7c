"""`sora train ... model.pretrained=DIR` from a tiny random Wan transformer made with diffusers, on
latent shards with cached umT5 features: the DiT takes the directory's architecture and weights;
step 0's loss equals the same batch scored by diffusers' own forward (first frames given clean with
t = 0, captions zero-padded to text.context_rows); sp = 2 over 2 ZeRO-3 ranks logs the 1-rank
losses; a resume takes the checkpoint's weights, not the pretrained ones, and is bitwise exact.
Contradicting configs are refused by name."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

diffusers = pytest.importorskip("diffusers")
from diffusers import WanTransformer3DModel  # noqa: E402

from sora.config import ConfigError, load_config  # noqa: E402
from sora.data.latent_shards import cached_text, latent_stream  # noqa: E402
from sora.data.loader import PackedLoader  # noqa: E402
from sora.data.shards import SkipStats  # noqa: E402
from sora.data.synth import synthesize  # noqa: E402
from sora.models import load_dit, wan  # noqa: E402
from sora.preprocess import preprocess  # noqa: E402
from sora.train.artifacts import run_config  # noqa: E402
from sora.train.flops import DiTShape  # noqa: E402
from sora.train.trainer import draw_noise  # noqa: E402
from tests.cli_runs import ROOT, metrics, random_vae_run, sora, sora_ranks  # noqa: E402
from tests.tiny_wan import TEXT_DIM as DIM, umt5  # noqa: E402

WAN = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=24, in_channels=4, out_channels=4,
           text_dim=DIM, freq_dim=32, ffn_dim=40, num_layers=2, cross_attn_norm=True,
           qk_norm="rms_norm_across_heads", rope_max_seq_len=64)
STEPS = 4


@pytest.fixture(scope="module")
def wan_world(tmp_path_factory):
    """A tiny random Wan directory (every weight perturbed: no zero init hides a mapping error), a
    tiny umT5 and latent shards holding its features."""
    base = tmp_path_factory.mktemp("wantrain")
    torch.manual_seed(11)
    ref = WanTransformer3DModel(**WAN).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ref.save_pretrained(base / "wan")
    umt5(base / "umt5")
    synthesize(base / "raw", clips=8, heldout_clips=0, seed=4, shard_size=4)
    random_vae_run(base / "vae")
    cfg = load_config(f"{ROOT}/configs/demo.yaml", [f"data.path={base / 'raw'}", f"vae.run={base / 'vae'}",
                                                     "vae.channels=8", "data.fps=0", "text.encoder=t5",
                                                     f"text.path={base / 'umt5'}", "text.max_tokens=8"])
    preprocess(cfg, base / "lat", progress=False)
    return base, ref


def _args(base, run, *extra):
    return ["train", f"{ROOT}/configs/demo.yaml", f"data.path={base / 'lat'}", "text.encoder=t5",
            f"text.path={base / 'umt5'}", "text.max_tokens=8", "text.context_rows=12", f"model.pretrained={base / 'wan'}",
            f"run.dir={run}", f"train.steps={STEPS}", "run.save_every=2", "run.log_every=1", "data.tokens_per_batch=600",
            "data.shuffle_buffer=4", "optim.warmup=2", "diffusion.first_frame_prob=0.7", *extra]


def _diffusers_loss(ref, cfg) -> float:
    """The trainer's first pack and noise, rebuilt from the run's config, scored by diffusers: per
    sample, x_t = (1 - t) x0 + t eps (a given first frame clean, its timestep 0), the caption's
    rows then zero rows up to context_rows, loss = mean over scored tokens of |v - (eps - x0)|^2."""
    cached = cached_text(cfg, latent=True)
    stream, encode, shape = latent_stream(cfg, 0, 1, SkipStats(), features=True)
    loader = PackedLoader(stream, encode, cfg.model.patch, cfg.data.tokens_per_batch, cfg.data.caption_dropout,
                          cfg.run.seed, latent_shape=shape, empty_text=cached.empty)
    batch = next(loader)
    t, noise, given = draw_noise(batch, torch.Generator().manual_seed(cfg.run.seed * 1000 + 1), cfg)
    cu, p, rows = batch.cu_seqlens.tolist(), batch.values_per_token, cfg.text.context_rows
    total, scored, clean_frames = 0.0, 0, 0
    for b, (gt, gh, gw) in enumerate(batch.grid.tolist()):
        lat_shape = (cfg.vae.latent_channels, gt, 2 * gh, 2 * gw)                 # patch (1, 2, 2)
        x0 = batch.latents[cu[b] * p:cu[b + 1] * p].view(lat_shape)
        eps = noise[cu[b] * p:cu[b + 1] * p].view(lat_shape)
        xt = (1 - t[b]) * x0 + t[b] * eps
        ts = torch.full((1, cu[b + 1] - cu[b]), 1000 * float(t[b]))
        first = bool(given[cu[b]:cu[b + 1]].any())
        if first:
            xt[:, 0], ts[0, :gh * gw] = x0[:, 0], 0
            clean_frames += 1
        a, z = batch.text.cu_seqlens[b:b + 2].tolist()
        ctx = torch.zeros(rows, DIM)
        ctx[:z - a] = batch.text.ctx[a:z]
        with torch.no_grad():
            v = ref(xt[None], ts, ctx[None]).sample[0]
        err = (v - (eps - x0)).square()
        if first:
            err = err[:, 1:]
        total += float(err.sum()) / p
        scored += err[0].numel() // 4                                                 # tokens: 2 x 2 values each
    assert clean_frames, "the first pack holds no clip trained image-to-video: the t = 0 path is not exercised"
    return total / scored


@pytest.mark.slow
@pytest.mark.distributed
def test_train_from_wan_weights(wan_world, tmp_path):
    base, ref = wan_world
    run = tmp_path / "one"
    r = sora(*_args(base, run), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "DiT weights from" in r.stderr
    cfg = run_config(run)
    one = metrics(run)
    assert sorted(one) == list(range(STEPS)) and all(torch.isfinite(torch.tensor(one[s]["loss"])) for s in one)
    torch.testing.assert_close(one[0]["loss"], _diffusers_loss(ref, cfg), rtol=1e-5, atol=0)
    assert one[0]["mfu"] > 0
    # the cost model describes the Wan DiT the run trained, and the run loads back as one
    dit = load_dit(run)
    assert wan.is_wan(dit) and DiTShape.from_config(cfg).dit_params() == sum(p.numel() for p in dit.parameters())
    assert not torch.equal(dit.blocks[0].mlp[0].weight, load_dit(base / "wan").blocks[0].mlp[0].weight)
    # `sora export` rebuilds the parameter shapes from the config alone (the Wan architecture, no encoder weights)
    r = sora("export", "--run", str(run), "--ema", "--out", str(tmp_path / "ema.safetensors"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    exported = load_dit(tmp_path / "ema.safetensors")          # = final/ema.safetensors, which load_dit(run) reads
    assert all(torch.equal(x, y) for x, y in zip(exported.state_dict().values(), dit.state_dict().values()))

    # sp = 2 over 2 ranks (ZeRO-3 shards over both): the same losses and gradient norms
    r = sora_ranks(2, *_args(base, tmp_path / "sp2", "parallel.sp=2", "parallel.check_packs=true"), cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-4000:]
    two = metrics(tmp_path / "sp2")
    for s in range(STEPS):
        assert one[s]["tokens"] == two[s]["tokens"]
        for key in ("loss", "grad_norm"):
            assert abs(one[s][key] - two[s][key]) <= 1e-5 * abs(one[s][key]), (s, key, one[s][key], two[s][key])

    # resume from step 1's checkpoint: the checkpoint's weights (pretrained ones are not loaded), bitwise
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step00000003")
    shutil.rmtree(resumed / "final")
    (resumed / "checkpoints" / "newest").write_text("step00000001")
    r = sora(*_args(base, resumed), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stderr and "DiT weights from" not in r.stderr
    again = metrics(resumed)
    for s in (2, 3):
        assert (again[s]["loss"], again[s]["grad_norm"]) == (one[s]["loss"], one[s]["grad_norm"]), s
    a, b = load_dit(run), load_dit(resumed)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_configs_contradicting_the_pretrained_model_are_refused(wan_world, tmp_path):
    base, ref = wan_world
    ok = [f"data.path={base / 'lat'}", "text.encoder=t5", f"text.path={base / 'umt5'}", "text.max_tokens=8",
          f"model.pretrained={base / 'wan'}"]
    cfg = load_config(f"{ROOT}/configs/demo.yaml", ok + ["model.width=48"])      # agreeing dims are fine
    from sora.config import resolved_dims
    assert resolved_dims(cfg.model) == (2, 48, 2)
    bad = [(["model.pretrained=Wan-AI/Wan2.1-T2V-1.3B-Diffusers"], "model.pretrained.*nothing is downloaded"),
           (["model.width=64"], "model.width.*64 contradicts.*width 48"),
           (["model.depth=3"], "model.depth.*3 contradicts.*depth 2"),
           (["model.patch=[1,1,1]"], r"model.patch.*\[1, 1, 1\] contradicts.*\[1, 2, 2\]"),
           (["vae.latent_channels=8"], "vae.latent_channels.*8 latent channels.*reads 4"),
           (["text.encoder=hash"], "text.encoder.*hash encoder"),
           (["parallel.sp=4"], "parallel.sp.*2 heads are not divisible by sp=4")]
    for extra, match in bad:
        with pytest.raises(ConfigError, match=match):
            load_config(f"{ROOT}/configs/demo.yaml", ok + extra)
    # a Wan that writes other channels than it reads (diffusers' default out_channels differ) cannot train
    odd = tmp_path / "odd"
    odd.mkdir()
    raw = json.loads((base / "wan" / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**raw, "out_channels": 6}))
    with pytest.raises(ConfigError, match="reads 4 latent channels and writes 6"):
        load_config(f"{ROOT}/configs/demo.yaml", ok[:-1] + [f"model.pretrained={odd}"])
    # the DiT's text width must be the cached features'
    wide = tmp_path / "wide"
    wide.mkdir()
    (wide / "config.json").write_text(json.dumps({**raw, "text_dim": DIM + 1}))
    from sora.models.t2v import TextToVideo
    with pytest.raises(ValueError, match=f"text features of width {DIM + 1}.*gives {DIM}"):
        TextToVideo(load_config(f"{ROOT}/configs/demo.yaml", ok[:-1] + [f"model.pretrained={wide}"]), text_dim=DIM)


@pytest.mark.slow
def test_documented_lora_commands_from_a_wan_directory(wan_world, tmp_path):
    """The README's path: `sora train ... model.pretrained=WAN_DIR lora.rank=R`, then `sora export
    --format lora` (loaded by diffusers' WanPipeline.load_lora_weights onto the Wan directory) and
    `--format diffusers` (WanTransformer3DModel.from_pretrained): both compute what the run's model
    computes. A resume rebuilds the frozen base from WAN_DIR (the checkpoint holds only adapters)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    from tests.test_lora import _rel, _wan_outputs

    base, _ = wan_world
    run = tmp_path / "lora"
    lora = ["lora.rank=3", "lora.alpha=6", "optim.lr=0.05"]
    r = sora(*_args(base, run, *lora), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    for fmt in ("lora", "diffusers"):
        r = sora("export", "--run", str(run), "--ema", "--format", fmt, "--out", str(tmp_path / fmt), cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]

    g = torch.Generator().manual_seed(5)
    lat = [torch.randn(4, *s, generator=g) for s in ((1, 4, 6), (3, 6, 4), (2, 4, 4))]
    sig = torch.rand(3, generator=g)
    text = [torch.randn(n, DIM, generator=g) for n in (3, 12, 1)]
    with torch.no_grad():
        ours = load_dit(run).denoise(lat, sig, text)           # the run's EMA, adapter merged into WAN_DIR's base
    pipe = WanPipeline(tokenizer=None, text_encoder=None, transformer=WanTransformer3DModel.from_pretrained(
        base / "wan"), vae=None, scheduler=FlowMatchEulerDiscreteScheduler())
    before = _wan_outputs(pipe.transformer, lat, sig, text)
    pipe.load_lora_weights(str(tmp_path / "lora"))
    adapted = _wan_outputs(pipe.transformer, lat, sig, text)
    assert _rel(adapted, before) > 1e-3                          # the trained adapter changes the model
    assert _rel(ours, adapted) < 1e-4
    merged = WanTransformer3DModel.from_pretrained(tmp_path / "diffusers").eval()
    assert _rel(_wan_outputs(merged, lat, sig, text), adapted) < 1e-4

    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step00000003")
    shutil.rmtree(resumed / "final")
    (resumed / "checkpoints" / "newest").write_text("step00000001")
    r = sora(*_args(base, resumed, *lora), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    first, again = metrics(run), metrics(resumed)
    assert all(again[s][k] == first[s][k] for s in (2, 3) for k in ("loss", "grad_norm"))
    for name in ("adapter.safetensors", "adapter_ema.safetensors"):
        a, b = load_file(str(run / "final" / name)), load_file(str(resumed / "final" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
