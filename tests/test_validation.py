"""Validation during training (train.validate_every, sora/train/validation.py): a run with validation
trains exactly as one without (losses, grad norms, every RNG and the loader position, the final
EMA, bitwise), writes mp4 + gif per prompt and size under RUN_DIR/samples/stepN/ and the clips to
TensorBoard; under ZeRO-3 + sequence parallelism on 2 ranks the gathered EMA samples exactly what
`sora sample` samples from the run's final EMA; bad values and a missing VAE fail at start-up."""
import json
import logging
from pathlib import Path

import pytest
import torch

from sora.config import ConfigError, load_config
from sora.train.artifacts import build_vae
from sora.train.validation import decoding_vae
from tests.cli_runs import ROOT, dit_args, metrics, random_vae_run, sora, sora_ranks

PROMPTS = "train.validate_prompts=[a red circle moving left, a blue square]"
VALIDATE = ["train.validate_steps=2", "train.validate_sizes=[[5, 32, 32], [1, 32, 48]]", PROMPTS]
CLIPS = ["00-a_red_circle_moving_left-5x32x32", "00-a_red_circle_moving_left-1x32x48",
         "01-a_blue_square-5x32x32", "01-a_blue_square-1x32x48"]


@pytest.mark.parametrize("override, key", [
    ("train.validate_every=-1", "train.validate_every"),
    ("train.validate_steps=-2", "train.validate_steps"),
    ("train.validate_prompts=[a red circle, '  ']", "train.validate_prompts"),
    ("train.validate_prompts=[3]", "train.validate_prompts"),
    ("train.validate_sizes=[[4, 32, 32]]", "train.validate_sizes[0]"),      # 4 frames: not 1 + ft*k
    ("train.validate_sizes=[[5, 30, 32]]", "train.validate_sizes[0]"),      # 30: not a multiple of fh * patch
    ("train.validate_sizes=[[5, 32]]", "train.validate_sizes[0]"),
])
def test_bad_validation_values_are_named(override, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[")):
        load_config(f"{ROOT}/configs/demo.yaml", ["train.validate_every=5", PROMPTS, override])


def test_validation_without_prompts_or_sizes_is_refused():
    with pytest.raises(ConfigError, match="train.validate_prompts.*give at least one"):
        load_config(f"{ROOT}/configs/demo.yaml", ["train.validate_every=5"])
    with pytest.raises(ConfigError, match="train.validate_sizes"):
        load_config(f"{ROOT}/configs/demo.yaml", ["train.validate_every=5", PROMPTS, "sample.sizes=[]"])
    load_config(f"{ROOT}/configs/demo.yaml", [PROMPTS])      # prompts without validate_every: fine, unused


def test_latent_shards_decode_with_the_vae_that_made_them_or_fail_at_start(tmp_path):
    """On latent shards the trainer has no VAE: validation takes the one named by the shards'
    manifest (then vae.pretrained, vae.run); with none it says so before training starts."""
    random_vae_run(tmp_path / "vae")
    lat = tmp_path / "lat"
    lat.mkdir()
    manifest = {"format": "sora-latents-v1", "latent_channels": 4, "ft": 2, "fh": 4, "patch": [1, 2, 2],
                "vae": {"run": str(tmp_path / "vae")}}
    (lat / "latents.json").write_text(json.dumps(manifest))
    cfg = load_config(f"{ROOT}/configs/demo.yaml", [f"data.path={lat}", f"vae.run={tmp_path / 'gone'}",
                                                     "vae.channels=8", "train.validate_every=5", PROMPTS])
    vae = decoding_vae(cfg, torch.device("cpu"), latent_shards=True)
    assert vae.latent_channels == 4 and not vae.training
    manifest["vae"] = {"run": str(tmp_path / "moved-away")}
    (lat / "latents.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="train.validate_every.*moved-away.*set vae.run or vae.pretrained"):
        decoding_vae(cfg, torch.device("cpu"), latent_shards=True)
    cfg = load_config(f"{ROOT}/configs/demo.yaml", [f"data.path={lat}", "vae.channels=16", f"vae.run={tmp_path / 'vae'}",
                                                     "train.validate_every=5", PROMPTS])
    manifest["vae"] = {}
    (lat / "latents.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="vae.channels"):          # the config's VAE, checked against it
        decoding_vae(cfg, torch.device("cpu"), latent_shards=True)


def test_latent_shards_made_by_a_diffusers_vae_decode_with_it(tmp_path):
    pytest.importorskip("diffusers", reason="the optional pretrained-VAE path needs diffusers")
    from diffusers import AutoencoderKLWan

    from sora.models.pretrained import DiffusersVAE

    AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1,
                     temperal_downsample=[True, True]).save_pretrained(tmp_path / "wan-vae")   # ft 4, fh 4
    lat = tmp_path / "lat"
    lat.mkdir()
    (lat / "latents.json").write_text(json.dumps({"latent_channels": 4, "ft": 4, "fh": 4, "patch": [1, 2, 2], "vae": {
        "pretrained": str(tmp_path / "wan-vae"), "family": "AutoencoderKLWan"}}))
    overrides = [f"data.path={lat}", f"vae.run={tmp_path / 'gone'}", "train.validate_every=5", PROMPTS,
                 "sample.sizes=[[5, 32, 32]]"]
    cfg = load_config(f"{ROOT}/configs/demo.yaml", overrides + ["vae.ft=4"])
    assert isinstance(decoding_vae(cfg, torch.device("cpu"), latent_shards=True), DiffusersVAE)
    cfg = load_config(f"{ROOT}/configs/demo.yaml", overrides)                        # vae.ft=2
    with pytest.raises(ConfigError, match="vae.ft.*is 2 but the VAE"):
        decoding_vae(cfg, torch.device("cpu"), latent_shards=True)


@pytest.fixture
def one_rank():
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.slow      # ~6 s: the first model built on the meta device imports torch._refs
def test_unwritable_samples_are_warned_about_and_training_goes_on(tmp_path, one_rank, caplog):
    """Samples are a by-product: a clip that cannot be written is named in a warning and skipped."""
    from sora.models.t2v import TextToVideo
    from sora.train.ema import ShardedEMA
    from sora.train.metrics import MetricsLogger
    from sora.train.validation import Validator

    run = tmp_path / "run"
    cfg = load_config(f"{ROOT}/configs/demo.yaml", [f"run.dir={run}", "model.depth=1", "model.width=48", "model.heads=4",
                                                     "vae.channels=8", "train.validate_every=3", PROMPTS,
                                                     "train.validate_steps=1", "train.validate_sizes=[[1, 32, 32]]"])
    model = TextToVideo(cfg)
    ema = ShardedEMA(model.named_parameters(), cfg.train.ema)

    def empty_model():
        with torch.device("meta"):
            return TextToVideo(cfg)

    caplog.set_level(logging.INFO, logger="sora.train")
    run.mkdir()
    (run / "samples").write_text("a file where the samples directory goes")
    metrics = MetricsLogger(run, enabled=True)
    validator = Validator(cfg, empty_model, build_vae(cfg).eval(), torch.device("cpu"), torch.float32, run, 0, 1)
    rng = torch.get_rng_state()
    assert validator(1, ema, metrics) is None                     # not due: 0, 3, 6, ... and the last
    assert validator(3, ema, metrics) > 0
    metrics.close()
    assert torch.equal(torch.get_rng_state(), rng)
    assert caplog.text.count("validation at step 3: could not write") == 3   # 2 clips + index.json
    assert "validation at step 3: 0 of 2 clips" in caplog.text


def _same_training(ref: Path, run: Path, last: int) -> None:
    """Bitwise: losses and grad norms of every step, the RNG + loader state checkpointed after the
    last step (torch's RNG, the noise generator, packs taken), the final EMA weights. numpy's and
    python's global RNGs are not compared: nothing seeds them (they differ between any two runs)."""
    a, b = metrics(ref), metrics(run)
    assert sorted(a) == sorted(b) == list(range(last + 1))
    for step in a:
        assert (a[step]["loss"], a[step]["grad_norm"]) == (b[step]["loss"], b[step]["grad_norm"]), step
    tag = f"checkpoints/step{last:08d}"
    for state in sorted((ref / tag).glob("state_rank*.json")):
        mine, theirs = (json.loads(p.read_text()) for p in (state, run / tag / state.name))
        for saved in (mine, theirs):
            del saved["rng"]["numpy"], saved["rng"]["python"]
        assert mine == theirs, state.name
    assert (ref / "final" / "ema.safetensors").read_bytes() == (run / "final" / "ema.safetensors").read_bytes()


def _tb_images(run: Path) -> dict[str, list]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run / "tb"), size_guidance={"images": 0})
    ea.Reload()
    return {tag: ea.Images(tag) for tag in ea.Tags()["images"]}


def _check_outputs(run: Path, steps: list[int]) -> None:
    """mp4 + gif of every clip at every validated step, index.json, the gifs in TensorBoard."""
    for step in steps:
        out = run / "samples" / f"step{step:08d}"
        for clip in CLIPS:
            assert (out / f"{clip}.mp4").stat().st_size > 0 and (out / f"{clip}.gif").stat().st_size > 0
        index = json.loads((out / "index.json").read_text())
        assert sorted(c["file"] for c in index) == sorted(f"{clip}.mp4" for clip in CLIPS)
    images = _tb_images(run)
    assert sorted(images) == sorted(f"validation/{clip}" for clip in CLIPS)
    for tag, events in images.items():
        assert [e.step for e in events] == steps
        gif = (run / "samples" / f"step{steps[-1]:08d}" / f"{tag.split('/')[1]}.gif").read_bytes()
        assert events[-1].encoded_image_string == gif and (events[-1].height, events[-1].width) == (32, int(tag.rsplit('x', 1)[1]))
    rows = metrics(run)
    assert [s for s in rows if "validation_s" in rows[s]] == steps
    assert all(rows[s]["validation_s"] > 0 for s in steps)


@pytest.mark.slow
def test_validation_leaves_the_training_run_unchanged(world):
    ref, run = world / "val-ref", world / "val-on"
    r = sora(*dit_args(world, ref, 3), cwd=world)
    assert r.returncode == 0, r.stderr[-3000:]
    r = sora(*dit_args(world, run, 3, "train.validate_every=2", *VALIDATE), cwd=world)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "validation at step 2: 4 of 4 clips" in r.stderr
    _same_training(ref, run, 2)
    _check_outputs(run, [0, 2])                 # every 2 steps from 0, and the last
    assert not (ref / "samples").exists()


@pytest.mark.slow
@pytest.mark.distributed
def test_validation_under_zero3_and_sequence_parallel_on_two_ranks(world):
    """2 ranks, ZeRO-3 (the EMA sharded), sp = 2: the clips are split over the ranks, the training is
    unchanged, and the last validation's clip is what `sora sample` makes from the final EMA."""
    ref, run = world / "val-ref-sp", world / "val-on-sp"
    r = sora_ranks(2, *dit_args(world, ref, 2, "parallel.sp=2"), cwd=world)
    assert r.returncode == 0, r.stdout[-3000:]
    r = sora_ranks(2, *dit_args(world, run, 2, "parallel.sp=2", "train.validate_every=1", *VALIDATE), cwd=world)
    assert r.returncode == 0, r.stdout[-3000:]
    _same_training(ref, run, 1)
    _check_outputs(run, [0, 1])
    out = world / "val-sample.gif"
    r = sora("sample", "--run", str(run), "--prompt", "a blue square", "--frames", "1", "--height", "32", "--width",
             "48", "--steps", "2", "--seed", "1", "--out", str(out), cwd=world)     # prompt 1: seed 0 + 1
    assert r.returncode == 0, r.stderr[-3000:]
    # the 4th clip: rank 1's share (clips go round-robin over the ranks)
    assert out.read_bytes() == (run / "samples" / "step00000001" / "01-a_blue_square-1x32x48.gif").read_bytes()


@pytest.mark.slow      # ~6 s: the meta-device copy (see above)
def test_lora_validation_copy_is_the_adapted_model(tmp_path, one_rank):
    """Under LoRA the EMA tracks only the adapters: the sampling copy takes them from the EMA and the
    frozen base as it is, and then computes what the trained model computes."""
    from sora.models.lora import trained_parameters
    from sora.models.t2v import TextToVideo, initial_model
    from sora.ops import build_layout
    from sora.train.ema import ShardedEMA
    from sora.train.validation import Validator

    cfg = load_config(f"{ROOT}/configs/demo.yaml", [f"run.dir={tmp_path}", "model.depth=1", "model.width=48",
                                                     "model.heads=4", "vae.channels=8", "lora.rank=2",
                                                     "train.validate_every=3", PROMPTS, "train.ema=0"])
    model = initial_model(cfg)
    with torch.no_grad():
        for _, p in trained_parameters(model):
            p.normal_()                                          # B starts at 0: make the adapters count
    ema = ShardedEMA(trained_parameters(model), cfg.train.ema)
    ema.update(0)                                                # ema 0: the shadow is the weights

    def empty_model():
        with torch.device("meta"):
            copy = TextToVideo(cfg)
            copy.add_lora(cfg.lora)
            return copy

    untrained = [(n, p) for n, p in model.named_parameters() if not p.requires_grad]
    validator = Validator(cfg, empty_model, None, torch.device("cpu"), torch.float32, tmp_path, 0, 1, untrained)
    copy = validator._ema_model(ema, keep=True)
    grid = torch.tensor([[2, 2, 3]], dtype=torch.int32)
    cu = torch.tensor([0, 12], dtype=torch.int32)
    x = torch.randn(12 * model.dit.in_dim)
    args = (x, build_layout(cu, grid), torch.tensor([0.5]), ["a red circle moving left"])
    with torch.no_grad():
        assert torch.equal(copy(*args), model.eval()(*args))
