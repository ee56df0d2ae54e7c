"""`sora sample` with Wan: a diffusers Wan pipeline directory (tiny random transformer, umT5 and
VAE written here) samples with Wan's defaults, and its latents equal diffusers' own pipeline run
on the same components, noise, negative prompt and time grid; image-to-video on a Wan 2.2 TI2V
pipeline (the first latent frame clean, its timestep 0) equals WanImageToVideoPipeline's.

Wan ships UniPC, a multistep solver; our samplers are Euler and Heun. The comparison therefore
gives diffusers' FlowMatchEulerDiscreteScheduler at the pipeline's flow_shift on the Wan repo's
grid (linspace(1, 0, steps + 1) shifted, which is ours), in fp32."""
import numpy as np
import pytest
import torch

pytest.importorskip("diffusers", reason="Wan pipelines need diffusers")
pytest.importorskip("transformers", reason="Wan's umT5 needs transformers")

from sora.config import save_config  # noqa: E402
from sora.inference import VideoGenerator  # noqa: E402
from sora.models.t2v import TextToVideo  # noqa: E402
from sora.models.wan_pipeline import WAN_NEGATIVE_PROMPT  # noqa: E402
from sora.shapes import ShapeRules  # noqa: E402
from sora.train.artifacts import save_weights  # noqa: E402
from tests.tiny_wan import wan_pipeline  # noqa: E402

STEPS = 3
PROMPT = "a red circle moving left"
TOL = 1e-4          # of the latents' scale, fp32


@pytest.fixture(scope="module")
def t2v(tmp_path_factory):
    d = tmp_path_factory.mktemp("wan21")
    return d, wan_pipeline(d, "2.1", flow_shift=3.0)


def _euler_on_wan_grid(pipe):
    """diffusers' flow-matching Euler at the pipeline's flow_shift, on the Wan repo's grid: the
    scheduler shifts linspace(1, 0, steps + 1)[:-1] and appends 0."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(shift=pipe.scheduler.config.flow_shift)
    set_timesteps = sched.set_timesteps
    sched.set_timesteps = lambda steps, device=None: set_timesteps(sigmas=np.linspace(1, 0, steps + 1)[:-1],
                                                                   device=device)
    return sched


def _rel(a, b):
    return float((a - b).abs().max()) / float(b.abs().max())


def test_t2v_latents_equal_diffusers_wan_pipeline(t2v):
    d, pipe = t2v
    gen = VideoGenerator.from_run(d)
    s = gen.cfg.sample
    assert (s.steps, s.cfg, s.sampler, s.shift, s.negative_prompt) == (50, 5.0, "euler", 3.0, WAN_NEGATIVE_PROMPT)
    assert (gen.cfg.text.context_rows, gen.playback_fps) == (512, 16.0)
    frames, h, w = 5, 32, 48                                     # 2 latent frames of 4 x 6: a 2 x 2 x 3 token grid
    grid = ShapeRules.of(gen.cfg).grid(frames, h, w)
    ours = gen.generate_latents([PROMPT], frames, h, w, steps=STEPS, seed=7, negative_prompt="a blue square")[0]
    noise = gen.noise(1, grid, torch.Generator().manual_seed(7))[0]           # the noise generate drew
    pipe.scheduler = _euler_on_wan_grid(pipe)
    want = pipe(prompt=PROMPT, negative_prompt="a blue square", height=h, width=w, num_frames=frames,
                num_inference_steps=STEPS, guidance_scale=5.0, latents=noise[None].clone(),
                output_type="latent").frames[0]
    assert ours.shape == want.shape == (6, 2, 4, 6)
    assert _rel(ours, want) < TOL, _rel(ours, want)
    assert _rel(noise, want) > 0.1                               # the steps did move the noise


def test_ti2v_image_to_video_equals_diffusers(tmp_path, monkeypatch):
    from diffusers.pipelines.wan import pipeline_wan_i2v
    from PIL import Image

    if not hasattr(pipeline_wan_i2v, "ftfy"):    # it calls ftfy.fix_text even when ftfy is not installed
        monkeypatch.setattr(pipeline_wan_i2v, "ftfy", type("ftfy", (), {"fix_text": staticmethod(str)}), raising=False)

    pipe = wan_pipeline(tmp_path, "2.2", flow_shift=5.0)
    gen = VideoGenerator.from_run(tmp_path)
    assert (gen.cfg.vae.fh, gen.cfg.vae.latent_channels, gen.cfg.sample.shift, gen.playback_fps) == (16, 12, 5.0, 24.0)
    frames, h, w = 5, 32, 64                                     # 2 latent frames of 2 x 4: a 2 x 1 x 2 token grid
    image = np.random.RandomState(0).randint(0, 256, (h, w, 3), dtype=np.uint8)
    ours = gen.generate_latents([PROMPT], frames, h, w, steps=STEPS, seed=3, first_frame=image)[0]
    noise = gen.noise(1, ShapeRules.of(gen.cfg).grid(frames, h, w), torch.Generator().manual_seed(3))[0]
    pipe.scheduler = _euler_on_wan_grid(pipe)
    want = pipe(image=Image.fromarray(image), prompt=PROMPT, negative_prompt=WAN_NEGATIVE_PROMPT, height=h, width=w,
                num_frames=frames, num_inference_steps=STEPS, guidance_scale=5.0, latents=noise[None].clone(),
                output_type="latent").frames[0]
    assert ours.shape == want.shape == (12, 2, 2, 4)
    assert _rel(ours, want) < TOL, _rel(ours, want)
    torch.testing.assert_close(ours[:, :1], gen._encode_image(image, h, w), rtol=0, atol=0)   # held clean


def test_sora_sample_writes_the_asked_video_from_a_wan_dir_and_a_run(t2v, tmp_path):
    """The command line on the pipeline directory (with --negative-prompt), and on a run directory
    fine-tuned from it (model.pretrained, vae.pretrained, text.path in its config.yaml): the run's
    weights, not the pretrained ones, make its samples."""
    from sora.cli import main
    from sora.data.video_io import decode_video
    from sora.models.wan_pipeline import wan_pipeline_config

    d, _ = t2v
    args = ["--prompt", PROMPT, "--frames", "5", "--height", "32", "--width", "48", "--steps", "2", "--seed", "1"]
    assert main(["sample", "--run", str(d), *args, "--negative-prompt", "a blue square",
                 "--out", str(tmp_path / "wan.mp4")]) == 0
    assert decode_video((tmp_path / "wan.mp4").read_bytes()).shape == (5, 32, 48, 3)
    gen = VideoGenerator.from_run(d)
    save_config(gen.cfg, tmp_path / "run" / "config.yaml")
    tuned = TextToVideo(gen.cfg)
    with torch.no_grad():
        tuned.dit.blocks[0].mlp[2].weight.mul_(3.0)             # "fine-tuned"
    save_weights(tuned.state_dict(), tmp_path / "run" / "final" / "ema.safetensors")
    assert main(["sample", "--run", str(tmp_path / "run"), *args, "--out", str(tmp_path / "run.mp4")]) == 0
    assert decode_video((tmp_path / "run.mp4").read_bytes()).shape == (5, 32, 48, 3)
    run = VideoGenerator.from_run(tmp_path / "run")
    assert run.cfg == wan_pipeline_config(d, run.vae)
    latent = dict(steps=2, seed=1)
    torch.testing.assert_close(run.generate_latents([PROMPT], 5, 32, 48, **latent)[0],
                               VideoGenerator(gen.cfg, tuned, gen.vae).generate_latents([PROMPT], 5, 32, 48, **latent)[0])
    assert _rel(run.generate_latents([PROMPT], 5, 32, 48, **latent)[0],
                gen.generate_latents([PROMPT], 5, 32, 48, **latent)[0]) > 1e-3


@pytest.mark.slow
def test_wan_config_preprocess_train_sample(t2v, tmp_path):
    """The documented commands from a Wan directory, on configs/wan2.1-t2v-1.3b-480p.yaml with the
    tiny pipeline's parts: preprocess (Wan VAE latents + umT5 rows), 2 training steps from the Wan
    weights on the cached features, then sample the run."""
    import json

    from sora.data.video_io import decode_video
    from tests.cli_runs import ROOT, sora

    d, _ = t2v
    assert sora("synth", "--out", str(tmp_path / "raw"), "--clips", "4", "--heldout", "0", cwd=tmp_path).returncode == 0
    parts = [f"vae.pretrained={d / 'vae'}", "vae.latent_channels=6", f"text.path={d / 'text_encoder'}",
             f"model.pretrained={d / 'transformer'}", "data.max_frames=5", "data.fps=0",
             "data.max_tokens_per_sample=64", "data.tokens_per_batch=128", "sample.sizes=[[5,32,48]]"]
    config = f"{ROOT}/configs/wan2.1-t2v-1.3b-480p.yaml"
    r = sora("preprocess", config, f"data.path={tmp_path / 'raw'}", *parts, "--out", str(tmp_path / "lat"),
             "--splits", "train", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    r = sora("train", config, f"data.path={tmp_path / 'lat'}", *parts, f"run.dir={tmp_path / 'run'}", "train.steps=2",
             "train.precision=fp32", "run.log_every=1", "data.shuffle_buffer=4", "optim.warmup=1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(np.isfinite(losses))
    r = sora("sample", "--run", str(tmp_path / "run"), "--prompt", PROMPT, "--frames", "5", "--height", "32",
             "--width", "48", "--steps", "2", "--out", str(tmp_path / "run.mp4"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert decode_video((tmp_path / "run.mp4").read_bytes()).shape == (5, 32, 48, 3)
