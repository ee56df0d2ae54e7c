"""A diffusers Wan pipeline directory as one of our configs, so `sora sample --run DIR` samples the
open weights as they are: DIR holds model_index.json, transformer/, vae/, text_encoder/, tokenizer/
and scheduler/ (the layout of Wan-AI/Wan2.1-T2V-1.3B-Diffusers and Wan2.2-TI2V-5B-Diffusers).

Wan's sampling defaults (`WAN_SAMPLE`, also spelled out in configs/wan*.yaml's `sample:` section):
50 steps, guidance 5.0 and the Wan repo's negative prompt (wan/configs/shared_config.py; diffusers'
WanPipeline examples use its English translation), on the Wan repo's time grid (linspace(1, 0,
steps + 1) shifted) with Euler steps. The shift is the directory's own scheduler flow_shift (3.0
in the 480p releases; diffusers' docs: 5.0 for 720p). Wan samples with UniPC, a multistep solver
on the same grid; ours are Euler and Heun, so the same steps give close, not equal, samples.
"""
from __future__ import annotations

import json
from pathlib import Path

from sora.config import Config, ConfigError, config_from_dict

WAN_NEGATIVE_PROMPT = ("色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
                       "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的"
                       "肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走")
WAN_SAMPLE = {"steps": 50, "cfg": 5.0, "sampler": "euler", "negative_prompt": WAN_NEGATIVE_PROMPT}
WAN_CONTEXT_ROWS = 512      # umT5 rows Wan's pipeline feeds its transformer (the real ones, then zeros)
WAN_DEFAULT_SHIFT = 5.0     # the Wan repo's generate.py default when a scheduler config names none


def is_wan_pipeline(path: str | Path) -> bool:
    index = Path(path) / "model_index.json"
    return index.is_file() and json.loads(index.read_text()).get("_class_name", "").startswith("Wan")


def _json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"Wan pipeline directory: '{path}' is missing")
    return json.loads(path.read_text())


def wan_pipeline_config(path: str | Path, vae, overrides: list[str] = ()) -> Config:
    """The Config of a Wan pipeline directory whose VAE (a DiffusersVAE of DIR/vae) is loaded: its
    transformer, VAE and umT5 as model.pretrained, vae.pretrained and text.path, Wan's sampling
    defaults, and image-to-video allowed when the pipeline is a TI2V one (expand_timesteps)."""
    p = Path(path)
    index = _json(p / "model_index.json")
    if index.get("transformer_2") and index["transformer_2"][0] is not None:
        raise ConfigError(f"'{p}' is a two-expert Wan 2.2 pipeline (transformer + transformer_2 switched at "
                          "boundary_ratio): sampling one needs both experts, which `sora sample` does not run yet")
    ti2v = bool(index.get("expand_timesteps", False))
    scheduler = _json(p / "scheduler" / "scheduler_config.json")
    shift = scheduler.get("flow_shift", scheduler.get("shift")) or WAN_DEFAULT_SHIFT
    patch = _json(p / "transformer" / "config.json").get("patch_size", [1, 2, 2])
    fps = 24 if ti2v else 16        # the rates Wan 2.2 TI2V and Wan 2.1 generate at (sample_fps)
    data = {
        "model": {"pretrained": str(p / "transformer"), "patch": list(patch)},
        "vae": {"pretrained": str(p / "vae"), "ft": vae.ft, "fh": vae.fh, "latent_channels": vae.latent_channels},
        "text": {"encoder": "t5", "path": str(p / "text_encoder"), "max_tokens": WAN_CONTEXT_ROWS,
                 "context_rows": WAN_CONTEXT_ROWS},
        # TI2V trained text -> video and image -> video: both modes sample; Wan 2.1 T2V only the first
        "diffusion": {"first_frame_prob": 0.5 if ti2v else 0.0},
        "data": {"fps": fps, "max_frames": 1 + vae.ft * 30},
        "sample": {**WAN_SAMPLE, "shift": float(shift), "sizes": []},
    }
    return config_from_dict(data, list(overrides))
