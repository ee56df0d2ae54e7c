"""`sora` command line: synth, ingest, train-vae, train, export, sample, evaluate (and more, see `sora -h`)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from sora.config import ConfigError, load_config
from sora.data.ingest.options import DEFAULT_MAX_PIXELS


def _cmd_synth(a):
    from sora.data.synth import synthesize

    manifest = synthesize(a.out, clips=a.clips, seed=a.seed, heldout_clips=a.heldout)
    print(f"wrote {len(manifest['train'])} train and {len(manifest['heldout'])} held-out shards to {a.out}")


def _cmd_ingest(a):
    from sora.data.ingest.options import IngestError, IngestOptions, parse_clip_seconds
    from sora.data.ingest.run import format_summary, ingest

    try:
        clip_min, clip_max = parse_clip_seconds(a.clip_seconds)
        opts = IngestOptions(split=a.split, min_seconds=a.min_seconds, max_seconds=a.max_seconds, clip_min=clip_min,
                             clip_max=clip_max, scenes=a.scenes, min_side=a.min_side, max_side=a.max_side,
                             max_aspect=a.max_aspect, fps_max=a.fps_max, min_motion=a.min_motion,
                             samples_per_shard=a.samples_per_shard, max_pixels=a.max_pixels)
        summary = ingest(a.sources, a.out, captions=a.captions, opts=opts, workers=a.workers,
                         progress=not a.no_progress)
    except IngestError as e:
        print(f"sora ingest: error: {e}", file=sys.stderr)
        return 2
    print(format_summary(summary))


def _cmd_train(a):
    """`sora train` (the DiT) and `sora train-vae`: the same start, the same ways to stop."""
    from sora.train.faults import PreemptionFlag, Stopped

    preempt = PreemptionFlag()   # before the heavy imports: SIGUSR1/SIGTERM from here on checkpoint
    if a.cmd == "train":
        from sora.train.trainer import train_dit as train
    else:
        from sora.train.vae_trainer import train_vae as train
    cfg = load_config(a.config, a.overrides)
    try:
        run = train(cfg, preempt)
    except Stopped as e:
        print(f"sora {a.cmd}: {e.what}: {e} (exit {e.exit_code})", file=sys.stderr)
        return e.exit_code
    finally:
        preempt.restore()
        _close_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"{'DiT' if a.cmd == 'train' else 'VAE'} run directory: {run}")


def _close_process_group() -> None:
    """Tear the process group down before exiting: leaving gloo's threads alive at interpreter exit
    can abort the process (exit 134), hiding the exit code launchers act on (75, 76)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def _cmd_sample(a):
    from sora.data.video_io import write_video
    from sora.inference import VideoGenerator, default_device

    gen = VideoGenerator.from_run(a.run, ema=not a.no_ema, device=a.device or default_device())
    first = a.first_frame
    if first not in (None, "joint", "generate"):                 # a path: animate that image
        from pathlib import Path

        from sora.data.video_io import decode_image
        first = decode_image(Path(first).read_bytes())[0]        # [H, W, 3]
    video = gen.generate([a.prompt], a.frames, a.height, a.width, a.steps, a.cfg, a.seed, first_frame=first,
                         negative_prompt=a.negative_prompt)[0]
    write_video(a.out, video, fps=a.fps or gen.playback_fps)
    print(f"wrote {a.out} ({video.shape[0]} frames, {video.shape[1]}x{video.shape[2]})")


def _cmd_export(a):
    from sora.export import export_run

    try:
        out = export_run(a.run, a.out, ema=a.ema, tag=a.tag, format=a.format)
    except ValueError as e:   # a run that does not fit the format, a checkpoint that does not fit the run
        raise ConfigError(str(e)) from None
    print(f"wrote {out} ({a.format}, {'EMA' if a.ema else 'raw'} weights)")


def _cmd_evaluate(a):
    from sora.eval.evaluate import evaluate_run, format_by_frames
    from sora.inference import default_device

    report = evaluate_run(a.run, a.data, seeds=a.seeds, first_frame=a.first_frame, device=a.device or default_device())
    print(json.dumps(report["summary"], indent=2))
    print(format_by_frames(report["summary"]))


def _cmd_plan(a):
    from sora.plan import format_plan, parse_clip, plan

    try:
        clip = parse_clip(a.clip)
        p = plan(a.size, clip, a.gpu_mem, a.gpus, ft=a.ft, fh=a.fh, patch=tuple(a.patch),
                 latent_channels=a.latent_channels, text_tokens=a.text_tokens, text_dim=a.text_dim,
                 checkpointing=not a.no_checkpointing, attention=a.attention, bf16=a.dtype == "bf16")
    except (ValueError, KeyError) as e:
        raise ConfigError(str(e)) from None
    print(json.dumps(p, indent=2) if a.json else format_plan(p))


def _cmd_preprocess(a):
    from sora.preprocess import preprocess

    cfg = load_config(a.config, a.overrides)
    r = preprocess(cfg, a.out, splits=tuple(a.splits.split(",")))
    print(f"rank {r['rank']}/{r['world']}: {r['written']} shards written, {r['kept']} kept, {r['samples']} clips "
          f"in {r['seconds']:.1f} s ({r['clips_per_s']:.2f} clips/s), skipped {r['skipped']} -> {a.out}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="sora", description="Sora-style video diffusion training")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("synth", help="write the moving-shapes dataset as WebDataset shards")
    s.add_argument("--out", required=True)
    s.add_argument("--clips", type=int, default=512)
    s.add_argument("--heldout", type=int, default=32)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=_cmd_synth)

    s = sub.add_parser("ingest", help="your videos / images + captions -> training shards (resumable; "
                                      "rank r of W takes chunks r::W)")
    s.add_argument("sources", nargs="*", metavar="SRC", help="files or directories (recursive)")
    s.add_argument("--out", required=True, help="directory for the shards (SPLIT-*.tar) and ingest_report.json")
    s.add_argument("--captions", default=None, metavar="FILE",
                   help="CSV / TSV / JSONL / Parquet manifest: path|video|file, caption|text, optional start, end "
                        "(seconds; then each row is one clip). Default: NAME.txt or NAME.json beside each file")
    s.add_argument("--split", default="train", help="shard name prefix (default: train; e.g. heldout)")
    s.add_argument("--workers", type=int, default=1, help="processes on this machine")
    s.add_argument("--min-seconds", type=float, default=0.0, help="skip sources shorter than this")
    s.add_argument("--max-seconds", type=float, default=float("inf"), help="skip sources longer than this")
    s.add_argument("--clip-seconds", default="0:10", metavar="MIN:MAX",
                   help="clip length: longer shots are cut into windows of at most MAX, shorter than MIN dropped "
                        "(default 0:10)")
    s.add_argument("--scenes", action="store_true", help="cut clips at shot boundaries (PySceneDetect)")
    s.add_argument("--min-side", type=int, default=8, help="skip videos whose short side is below this (px)")
    s.add_argument("--max-side", type=int, default=720, help="scale down so the short side is at most this (px)")
    s.add_argument("--max-aspect", type=float, default=float("inf"), help="skip when long/short side exceeds this")
    s.add_argument("--fps-max", type=float, default=float("inf"), help="resample higher frame rates down to this")
    s.add_argument("--min-motion", type=float, default=0.0,
                   help="skip clips whose motion score (mean |frame difference|, 0..255) is below this")
    s.add_argument("--samples-per-shard", type=int, default=64)
    s.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="refuse frames with more pixels than this, before decoding them")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(fn=_cmd_ingest)

    for name, what in (("train-vae", "stage 1: the causal VAE (DeepSpeed)"), ("train", "stage 2: the DiT (DeepSpeed)")):
        t = sub.add_parser(name, help=what)
        t.add_argument("config")
        t.add_argument("overrides", nargs="*", help="dotted key=value pairs")
        t.set_defaults(fn=_cmd_train)

    s = sub.add_parser("sample", help="generate one video from a prompt")
    s.add_argument("--run", required=True, help="run directory, a FILE.safetensors from `sora export`, or a "
                                                "diffusers Wan pipeline directory (model_index.json)")
    s.add_argument("--prompt", required=True)
    s.add_argument("--negative-prompt", default=None,
                   help="caption of guidance's unconditional branch (default: the run's sample.negative_prompt: "
                        "empty for ours, Wan's own for Wan)")
    s.add_argument("--frames", type=int, required=True)
    s.add_argument("--height", type=int, required=True)
    s.add_argument("--width", type=int, required=True)
    s.add_argument("--steps", type=int, default=None, help="default: the run's sample.steps")
    s.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the run's sample.cfg)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--fps", type=float, default=None, help="playback rate (default: the rate the run trained at)")
    s.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    s.add_argument("--first-frame", default=None, metavar="joint|generate|IMAGE",
                   help="joint: denoise all frames together; generate: text -> first frame -> clip; "
                        "IMAGE (png/jpg): animate it (image-to-video). Default: the run's sample.first_frame")
    s.add_argument("--out", required=True)
    s.add_argument("--device", default=None, help="cuda or cpu (default: cuda when a GPU is visible)")
    s.set_defaults(fn=_cmd_sample)

    s = sub.add_parser("export", help="gather a run's ZeRO-3 checkpoint shards into weights (LoRA merged, or the adapter)")
    s.add_argument("--run", required=True, help="run directory")
    s.add_argument("--out", required=True, help="sora: FILE.safetensors (the run's config goes in its metadata); "
                                                "diffusers / lora: a directory")
    s.add_argument("--format", choices=("sora", "diffusers", "lora"), default="sora",
                   help="sora: full weights for `sora sample`; diffusers (Wan): a WanTransformer3DModel directory, "
                        "LoRA merged; lora (Wan): the adapter for WanPipeline.load_lora_weights (default: sora)")
    s.add_argument("--ema", action="store_true", help="export the EMA weights instead of the raw ones")
    s.add_argument("--tag", default=None, help="checkpoint to export (default: the newest complete one)")
    s.set_defaults(fn=_cmd_export)

    s = sub.add_parser("preprocess", help="raw shards -> latent shards (VAE latents + text), resumable, rank r of W takes shards r::W")
    s.add_argument("config")
    s.add_argument("overrides", nargs="*", help="dotted key=value pairs (data.path: the raw shards)")
    s.add_argument("--out", required=True, help="directory for the latent shards")
    s.add_argument("--splits", default="train,heldout", help="comma-separated shard prefixes (default: train,heldout)")
    s.set_defaults(fn=_cmd_preprocess)

    s = sub.add_parser("evaluate", help="sample held-out prompts at the configured sizes and score adherence")
    s.add_argument("--run", required=True)
    s.add_argument("--data", default=None, help="dataset directory (default: the run's data.path)")
    s.add_argument("--seeds", type=int, default=1)
    s.add_argument("--first-frame", choices=("joint", "generate"), default=None,
                   help="sampling mode (default: the run's sample.first_frame)")
    s.add_argument("--device", default=None, help="cuda or cpu (default: cuda when a GPU is visible)")
    s.set_defaults(fn=_cmd_evaluate)

    s = sub.add_parser("plan", help="what fits: tokens per sample, per-GPU memory, sp degree needed")
    s.add_argument("--size", default="DiT-1B", help="DiT size from the registry (DiT-T ... DiT-3B)")
    s.add_argument("--clip", default="60s@720p@24fps", help="SECONDSs@HEIGHTp@FPSfps or SECONDSs@WxH@FPSfps")
    s.add_argument("--gpu-mem", type=float, default=80, help="GiB per GPU")
    s.add_argument("--gpus", type=int, default=8)
    s.add_argument("--ft", type=int, default=4, help="VAE temporal factor")
    s.add_argument("--fh", type=int, default=8, help="VAE spatial factor")
    s.add_argument("--patch", type=int, nargs=3, default=[1, 2, 2])
    s.add_argument("--latent-channels", type=int, default=16)
    s.add_argument("--text-tokens", type=int, default=256)
    s.add_argument("--text-dim", type=int, default=4096)
    s.add_argument("--attention", choices=["flash", "math"], default="flash")
    s.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    s.add_argument("--no-checkpointing", action="store_true")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=_cmd_plan)

    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    try:
        return a.fn(a) or 0
    except (ConfigError, FileNotFoundError) as e:
        print(f"sora {a.cmd}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
