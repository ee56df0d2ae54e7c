"""`sora plan`: what fits on a GPU for one long clip, from the analytic model in sora/train/flops.py.

    sora plan --size DiT-1B --clip 60s@720p@24fps --gpu-mem 80 --gpus 8

Prints the clip's tokens per sample, then for every Ulysses degree sp (dividing both the head
count and the GPU count) the per-GPU memory (ZeRO-3 states over all GPUs + activations and
backward temporaries of 1/sp of the tokens) and whether it fits; finally the smallest sp that fits.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

from sora.shapes import ShapeRules
from sora.train import flops as F

GiB = 1024 ** 3


@dataclass(frozen=True)
class Clip:
    seconds: float
    height: int
    width: int
    fps: float

    @property
    def frames(self) -> int:
        return max(1, round(self.seconds * self.fps))


_CLIP = re.compile(r"^(?P<sec>\d+(?:\.\d+)?)s@(?:(?P<w>\d+)x(?P<h>\d+)|(?P<p>\d+)p)@(?P<fps>\d+(?:\.\d+)?)fps$")


def parse_clip(text: str, aspect: float = 16 / 9) -> Clip:
    """'60s@720p@24fps' (width from the aspect ratio, 16:9 by default) or '10s@1280x720@24fps'."""
    m = _CLIP.match(text.strip().lower())
    if not m:
        raise ValueError(f"clip {text!r} is not like '60s@720p@24fps' or '10s@1280x720@24fps'")
    if m["p"]:
        h = int(m["p"])
        w = int(round(h * aspect))
    else:
        w, h = int(m["w"]), int(m["h"])
    return Clip(float(m["sec"]), h, w, float(m["fps"]))


def clip_tokens(clip: Clip, ft: int, fh: int, patch) -> tuple[int, tuple[int, int, int]]:
    """Tokens of one clip after the causal VAE (T = 1 + ft*k frames) and patchify; the grid."""
    grid = ShapeRules(ft, fh, tuple(patch)).grid(clip.frames, clip.height, clip.width)
    if min(grid) < 1:
        raise ValueError(f"clip {clip} makes no token with ft={ft}, fh={fh}, patch={patch}")
    return math.prod(grid), grid


def plan(size: str, clip: Clip, gpu_mem_gib: float, gpus: int, *, ft: int = 4, fh: int = 8, patch=(1, 2, 2),
         latent_channels: int = 16, text_tokens: int = 256, text_dim: int = 4096, checkpointing: bool = True,
         attention: str = "flash", bf16: bool = True, usable: float = 0.9) -> dict:
    shape = F.DiTShape.from_size(size, latent_channels, patch, text_dim)
    n, grid = clip_tokens(clip, ft, fh, patch)
    act_b = 2 if bf16 else 4
    params = shape.dit_params()
    state = F.zero3_state_bytes(params, world=gpus, bf16=bf16, layer_params=shape.block_params())
    no_state = F.StateBytes(0, 0, 0)
    # activations + temporaries of the whole sample, then split over the sp ranks of its group
    work = F.peak_bytes(shape, [n], [text_tokens], no_state, act_b, checkpointing, attention)
    flops = F.step_flops(shape, [n], [text_tokens], checkpointing, attention, ctx_requires_grad=False)
    rows = []
    for sp in range(1, gpus + 1):
        if gpus % sp or shape.heads % sp:
            continue
        total = state.total + work / sp
        rows.append({"sp": sp, "dp": gpus // sp, "tokens_per_gpu": -(-n // sp),
                     "states_gib": state.total / GiB, "activations_gib": work / sp / GiB, "total_gib": total / GiB,
                     "fits": total <= usable * gpu_mem_gib * GiB,
                     "alltoall_mib_per_layer_fwd": F.ulysses_alltoall_bytes(n, shape.width, sp, act_b) / 2 ** 20})
    fitting = [r for r in rows if r["fits"]]
    # if none fits here: the smallest sp (a divisor of the head count) that would, on sp GPUs or more
    more = None
    if not fitting:
        for sp in range(1, shape.heads + 1):
            world = max(gpus, sp)
            st = F.zero3_state_bytes(params, world=world, bf16=bf16, layer_params=shape.block_params())
            if shape.heads % sp == 0 and st.total + work / sp <= usable * gpu_mem_gib * GiB:
                more = {"sp": sp, "gpus_multiple_of": sp}
                break
    return {"size": size, "params": params, "clip": asdict(clip) | {"frames": clip.frames},
            "latent_grid": grid, "tokens_per_sample": n, "text_tokens": text_tokens,
            "gpu_mem_gib": gpu_mem_gib, "usable_fraction": usable, "gpus": gpus,
            "checkpointing": checkpointing, "attention": attention, "dtype": "bf16" if bf16 else "fp32",
            "model_flops_per_step_per_sample": flops.model, "executed_flops_per_step_per_sample": flops.executed,
            "rows": rows, "sp_needed": fitting[0]["sp"] if fitting else None, "with_more_gpus": more}


def format_plan(p: dict) -> str:
    c = p["clip"]
    lines = [
        f"{p['size']} ({p['params'] / 1e9:.2f} B params), clip {c['seconds']:g} s of {c['width']}x{c['height']} "
        f"at {c['fps']:g} fps = {c['frames']} frames",
        f"latent token grid {tuple(p['latent_grid'])} -> {p['tokens_per_sample']:,} tokens per sample "
        f"(+ {p['text_tokens']} text tokens)",
        f"training step FLOPs per sample: {p['model_flops_per_step_per_sample']:.3e} model, "
        f"{p['executed_flops_per_step_per_sample']:.3e} executed ({'with' if p['checkpointing'] else 'without'} "
        f"activation checkpointing, {p['attention']} attention, {p['dtype']})",
        f"{p['gpus']} GPU(s) of {p['gpu_mem_gib']:g} GiB, planning with {p['usable_fraction']:.0%} usable; "
        f"ZeRO-3 over all GPUs:",
        f"{'sp':>4} {'dp':>4} {'tokens/GPU':>12} {'states GiB':>11} {'activ. GiB':>11} {'total GiB':>10} "
        f"{'a2a MiB/layer':>14}  fits",
    ]
    for r in p["rows"]:
        lines.append(f"{r['sp']:>4} {r['dp']:>4} {r['tokens_per_gpu']:>12,} {r['states_gib']:>11.2f} "
                     f"{r['activations_gib']:>11.2f} {r['total_gib']:>10.2f} {r['alltoall_mib_per_layer_fwd']:>14.1f}"
                     f"  {'yes' if r['fits'] else 'no'}")
    if p["sp_needed"]:
        lines.append(f"-> sequence-parallel degree needed: sp={p['sp_needed']}")
    else:
        lines.append("-> does not fit at any sp this GPU count and head count allow")
        more = p["with_more_gpus"]
        lines.append(f"-> fits with sp={more['sp']} on a GPU count that is a multiple of {more['gpus_multiple_of']}"
                     if more else "-> no sp up to the head count fits: a shorter clip, a smaller model or more heads")
    lines.append("(analytic model: sora/train/flops.py; activation terms validated on CPU against measured "
                 "saved tensors and peaks within 20%; GPU peaks not yet measured)")
    return "\n".join(lines)
