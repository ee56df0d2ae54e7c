"""Nested dataclass config + YAML + dotted `key=value` overrides.

One schema serves both stages (`sora train-vae` uses run/data/vae/optim/train, `sora train` uses all).
Everything is validated before any work starts; errors name the offending key.
"""
from __future__ import annotations

import dataclasses
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sora.shapes import ShapeRules

class ConfigError(ValueError):
    """A config key is unknown, malformed or impossible."""


@dataclass
class RunConfig:
    dir: str = "runs/demo"
    seed: int = 0
    log_every: int = 10
    save_every: int = 200
    keep_checkpoints: int = 2


@dataclass
class DataConfig:
    path: str = "data/shapes"          # directory holding train-*.tar / heldout-*.tar
    split: str = "train"
    tokens_per_batch: int = 2048       # token budget of one packed micro-batch (per data-parallel rank)
    max_tokens_per_sample: int = 1024  # larger samples are resized down, aspect kept
    max_frames: int = 17
    shuffle_buffer: int = 256
    caption_dropout: float = 0.1       # replaced by the empty caption, for classifier-free guidance
    format: str = "auto"               # raw (mp4/png shards) | latent (`sora preprocess` output) | auto (latents.json present)
    fps: float = 0.0                   # > 0: take frames at about this rate (every round(fps_clip / fps)-th frame)
    min_tokens_per_sample: int = 1     # smaller samples are skipped (counted as too_few_tokens)
    image_ratio: float = -1.0          # share of images among samples; < 0: as they come in the shards


@dataclass
class VAEConfig:
    run: str = "runs/demo-vae"         # where stage 1 wrote its weights (used by stage 2 and sampling)
    channels: int = 32                 # base width of the conv stack
    latent_channels: int = 4
    ft: int = 2                        # temporal compression (T = 1 + ft*k)
    fh: int = 4                        # spatial compression (fh = fw)
    kl_weight: float = 1e-6
    l1_weight: float = 1.0
    l2_weight: float = 1.0
    perceptual_weight: float = 0.0     # > 0: feature-space loss from a frozen conv net (sora/train/vae_losses.py)
    perceptual_path: str = ""          # local safetensors of that net; empty: fixed random weights (no downloads)
    adv_weight: float = 0.0            # > 0: patch discriminator (hinge loss)
    adv_start: int = 0                 # step the discriminator starts training at
    adv_warmup: int = 100              # steps over which the generator's adversarial weight ramps up after adv_start
    disc_channels: int = 32
    eval_split: str = "heldout"        # PSNR / SSIM on these clips (skipped when the split has no shards)
    eval_clips: int = 32
    eval_every: int = 100              # steps; the last step is always evaluated
    chunk_frames: int = 0              # encode/decode long clips this many frames at a time (0: whole clip)
    tile: int = 0                      # encode/decode large frames in tiles of this many pixels (0: whole frame)
    tile_overlap: int = 0              # pixels of overlap between tiles, blended
    pretrained: str = ""               # local diffusers VAE directory (AutoencoderKLWan / AutoencoderKLCogVideoX), for preprocess


@dataclass
class TextConfig:
    encoder: str = "hash"              # "hash": word-hash embeddings + small transformer trained with the DiT; "t5": frozen local T5
    path: str = ""                     # local directory of a T5 encoder when encoder == "t5"
    dim: int = 128
    layers: int = 2
    heads: int = 4
    vocab: int = 4096
    max_tokens: int = 32
    # Where a frozen encoder's features come from in `sora train`: "cached" (read from latent shards
    # made by `sora preprocess` with this encoder; no encoder is loaded), "online" (encode captions),
    # "auto" (cached on latent shards with a frozen encoder, else online).
    source: str = "auto"
    cache_dtype: str = "float16"       # how `sora preprocess` stores features: float16 | bfloat16 | float32
    # > 0: each caption's rows are followed by zero rows up to this many before the DiT (Wan's
    # pipeline feeds 512); 0: the DiT attends to exactly the caption's real rows
    context_rows: int = 0


@dataclass
class ModelConfig:
    size: str = "DiT-T"                # registry name; explicit fields below override it when > 0
    depth: int = 0
    width: int = 0
    heads: int = 0
    patch: tuple = (1, 2, 2)           # (pt, ph, pw)
    mlp_ratio: float = 4.0
    rope_theta: float = 10000.0
    qk_norm: bool = True
    checkpointing: bool = False
    backend: str = "auto"              # kernel backend: torch | triton | cuda | cpp | flash_attn | auto
    # Start from these weights: a local diffusers WanTransformer3DModel directory or one of our runs
    # (never downloaded). Its architecture is the DiT's: size, mlp_ratio, qk_norm and rope_theta are
    # ignored; depth / width / heads (when set), patch and vae.latent_channels must agree with it.
    pretrained: str = ""


@dataclass
class DiffusionConfig:
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift_base: float = 1.0            # timestep shift at base_tokens tokens
    shift_max: float = 3.0             # timestep shift at max_tokens tokens
    base_tokens: int = 64
    max_tokens: int = 1024
    # Probability that a video sample trains image-to-video: its first latent frame is given clean
    # (not noised, not in the loss), the rest is denoised. Enables `sample.first_frame`.
    first_frame_prob: float = 0.0


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.99)
    eps: float = 1e-8
    warmup: int = 50
    grad_clip: float = 1.0
    min_lr_ratio: float = 0.1


@dataclass
class TrainConfig:
    steps: int = 1000
    ema: float = 0.999
    precision: str = "auto"            # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16
    zero_stage: int = 3
    max_nonfinite_steps: int = 5       # this many skipped (non-finite) steps in a row stop training
    # Validation samples (`sora train` only; sora/train/validation.py): every validate_every steps (0: off)
    # the EMA weights sample each prompt at each size with the sample: section's cfg, sampler and
    # first_frame, into RUN_DIR/samples/stepN/ (mp4 + gif) and TensorBoard.
    validate_every: int = 0
    validate_prompts: list = field(default_factory=list)
    validate_sizes: list = field(default_factory=list)   # [frames, height, width] each; empty: sample.sizes
    validate_steps: int = 0            # sampler steps; 0: sample.steps
    validate_seed: int = 0             # prompt i's noise comes from seed + i: the same at every validation


@dataclass
class ParallelConfig:
    sp: int = 1                        # sequence-parallel degree (Ulysses); data-parallel degree = world / sp
    timeout_s: float = 600.0           # collective timeout: a dead rank stops the others within this
    check_packs: bool = False          # debug: checksum each pack across its sequence-parallel group


@dataclass
class LoraConfig:
    rank: int = 0                      # > 0: train only LoRA adapters of this rank (peft); 0: every weight trains
    alpha: float = 0.0                 # adapter scale alpha / rank; 0: alpha = rank (scale 1)
    dropout: float = 0.0               # on the adapters' input
    # linear layers inside each DiT block that get an adapter (sora/models/dit.py names)
    targets: list = field(default_factory=lambda: ["attn.qkv", "attn.proj", "cross.q", "cross.kv", "cross.proj",
                                                   "mlp.0", "mlp.2"])
    save_merged: bool = False          # final/ also holds the merged full weights (model / ema.safetensors)


@dataclass
class SampleConfig:
    steps: int = 30
    cfg: float = 4.0
    sampler: str = "heun"              # euler | heun
    # joint: every frame denoised together. generate: text -> first frame (an image), then the clip
    # from that frame and the text (Emu Video's factorisation; needs diffusion.first_frame_prob > 0).
    first_frame: str = "joint"
    sizes: list = field(default_factory=lambda: [[9, 48, 48], [9, 48, 64]])  # [frames, height, width]
    negative_prompt: str = ""          # the caption of guidance's unconditional branch (Wan's configs: Wan's own)
    # > 0: one time shift at every size (Wan's flow_shift: 3.0 at 480p, 5.0 at 720p); 0: the
    # training's token-count shift (diffusion.shift_base .. shift_max)
    shift: float = 0.0


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    text: TextConfig = field(default_factory=TextConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    # Cluster job shape for `sora-launch slurm|hosts` (checked by the launcher, ignored by trainers).
    launcher: dict = field(default_factory=dict)


# ---------------------------------------------------------------- merging

def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Convert a YAML/override value to the field's declared type, naming the key on failure."""
    origin = typing.get_origin(typ) or typ
    try:
        if typ is bool or origin is bool:
            if isinstance(value, str):
                low = value.lower()
                if low in ("true", "1", "yes", "on"):
                    return True
                if low in ("false", "0", "no", "off"):
                    return False
                raise ValueError(value)
            if isinstance(value, (bool, int)):
                return bool(value)
            raise ValueError(value)
        if origin is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if origin is float:
            return float(value)
        if origin is str:
            return str(value)
        if origin is dict:
            if not isinstance(value, dict):
                raise ValueError(value)
            return dict(value)
        if origin in (tuple, list):
            if isinstance(value, str):
                value = _parse_yaml(value, f"config key '{key}'")
            if not isinstance(value, (list, tuple)):
                raise ValueError(value)
            return origin(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config key '{key}': cannot read {value!r} as {getattr(origin, '__name__', origin)}") from None
    return value


# Keys older run directories may still hold: ignored with a warning so their config.yaml loads.
RETIRED_KEYS = {"data.num_workers": "the loader is one process per rank"}


def _merge(obj: Any, data: dict, prefix: str) -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if key in RETIRED_KEYS:
            warnings.warn(f"config key '{key}' is retired and ignored ({RETIRED_KEYS[key]})", stacklevel=2)
            continue
        if name not in names:
            raise ConfigError(f"unknown config key '{key}' (known here: {', '.join(sorted(names))})")
        current = getattr(obj, name)
        if isinstance(current, dict) and isinstance(value, dict):   # free-form mapping: merge keys
            setattr(obj, name, {**current, **value})
            continue
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{key}' is a section; give it a mapping, not {value!r}")
            _merge(current, value, key + ".")
        else:
            setattr(obj, name, _coerce(value, hints[name], key))


def _parse_yaml(text: str, where: str) -> Any:
    """YAML -> Python, or a ConfigError naming `where` and the line and column of the problem."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        def at(mark) -> str:
            return f"line {mark.line + 1}, column {mark.column + 1}"

        problem, context = getattr(e, "problem_mark", None), getattr(e, "context_mark", None)
        msg = f"{where} is not valid YAML"
        msg += f" at {at(problem)}: {e.problem}" if problem is not None else f": {str(e).splitlines()[0]}"
        if context is not None and getattr(e, "context", None) and (problem is None or at(context) != at(problem)):
            msg += f" ({e.context} at {at(context)})"
        raise ConfigError(msg) from None


def _parse_override(text: str) -> dict:
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    value = _parse_yaml(raw, f"override '{text}'") if raw != "" else ""
    nested: dict = {}
    node = nested
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return nested


def load_config(path: str | None, overrides: list[str] = ()) -> Config:
    """YAML file (optional) then overrides, then validation."""
    cfg = Config()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file '{path}' does not exist")
        data = _parse_yaml(p.read_text(), f"config file '{path}'") or {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file '{path}' must hold a mapping at the top level")
        _merge(cfg, data, "")
    for text in overrides:
        _merge(cfg, _parse_override(text), "")
    validate(cfg)
    return cfg


def config_from_dict(data: dict, overrides: list[str] = ()) -> Config:
    """Like load_config, from an already-parsed mapping (e.g. a config stored in file metadata)."""
    cfg = Config()
    _merge(cfg, data, "")
    for text in overrides:
        _merge(cfg, _parse_override(text), "")
    validate(cfg)
    return cfg


def to_dict(cfg: Config) -> dict:
    def plain(v):
        if isinstance(v, tuple):
            return list(v)
        return v
    return {k: ({kk: plain(vv) for kk, vv in v.items()} if isinstance(v, dict) else plain(v))
            for k, v in dataclasses.asdict(cfg).items()}


def save_config(cfg: Config, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


# ---------------------------------------------------------------- validation

def _require(cond: bool, key: str, why: str) -> None:
    if not cond:
        raise ConfigError(f"config key '{key}': {why}")


def validate(cfg: Config) -> None:
    from sora.models.dit import DIT_SIZES  # registry lives with the model

    v, m, d, s = cfg.vae, cfg.model, cfg.data, cfg.sample
    _require(v.ft >= 1, "vae.ft", f"temporal factor must be >= 1, got {v.ft}")
    _require(v.fh >= 1 and (v.fh & (v.fh - 1)) == 0, "vae.fh", f"spatial factor must be a power of two, got {v.fh}")
    _require(v.ft == 1 or (v.ft & (v.ft - 1)) == 0, "vae.ft", f"temporal factor must be a power of two, got {v.ft}")
    _require(v.latent_channels >= 1, "vae.latent_channels", "must be >= 1")
    _require(v.tile == 0 or (v.tile % v.fh == 0 and v.tile_overlap % v.fh == 0 and 0 <= v.tile_overlap < v.tile),
             "vae.tile", f"tile {v.tile} and tile_overlap {v.tile_overlap} must be multiples of fh={v.fh}, overlap < tile")
    _require(v.chunk_frames >= 0 and v.chunk_frames % v.ft == 0, "vae.chunk_frames",
             f"must be a non-negative multiple of ft={v.ft}, got {v.chunk_frames}")
    _require(min(v.l1_weight, v.l2_weight, v.perceptual_weight, v.adv_weight, v.kl_weight) >= 0, "vae",
             "loss weights must be >= 0")
    _require(d.format in ("auto", "raw", "latent"), "data.format", f"unknown format '{d.format}'")
    _require(0 < d.min_tokens_per_sample <= d.max_tokens_per_sample, "data.min_tokens_per_sample",
             f"must be in [1, data.max_tokens_per_sample], got {d.min_tokens_per_sample}")
    _require(d.image_ratio < 0 or d.image_ratio <= 1, "data.image_ratio", f"must be <= 1 (< 0: natural), got {d.image_ratio}")
    _require(d.fps >= 0, "data.fps", f"must be >= 0, got {d.fps}")
    _require(len(m.patch) == 3 and all(int(p) >= 1 for p in m.patch), "model.patch", f"needs three positive ints, got {m.patch}")
    m.patch = tuple(int(p) for p in m.patch)
    if m.pretrained:
        _check_pretrained(cfg)
    _require(m.size in DIT_SIZES, "model.size", f"unknown size '{m.size}'; known: {', '.join(DIT_SIZES)}")
    depth, width, heads = resolved_dims(m)         # model.pretrained's when set (checked above)
    if not m.pretrained:
        _require(width % heads == 0, "model.heads", f"{heads} heads do not divide width {width}")
        head_dim = width // heads
        _require(head_dim % 2 == 0 and head_dim >= 6, "model.heads", f"head dim {head_dim} must be even and >= 6 for 3-D RoPE")
    _require(m.backend in ("auto", "torch", "triton", "cuda", "cpp", "flash_attn"), "model.backend", f"unknown backend '{m.backend}'")
    rules = ShapeRules.of(cfg)
    problem = ShapeRules(v.ft, v.fh).frames_problem(d.max_frames)     # a cap: 1 + ft*k, and one temporal patch
    if problem is None and rules.latent_frames(d.max_frames) < m.patch[0]:
        problem = f"{d.max_frames} frames make fewer latent frames than the temporal patch {m.patch[0]}"
    _require(problem is None, "data.max_frames", problem or "")
    problem = rules.frames_problem(1) if d.image_ratio > 0 else None
    _require(problem is None, "data.image_ratio", f"images are asked for, but {problem}")
    _require(d.tokens_per_batch >= d.max_tokens_per_sample, "data.tokens_per_batch",
             f"budget {d.tokens_per_batch} is smaller than data.max_tokens_per_sample {d.max_tokens_per_sample}")
    _require(0.0 <= d.caption_dropout < 1.0, "data.caption_dropout", f"must be in [0, 1), got {d.caption_dropout}")
    _check_sizes(s.sizes, "sample.sizes", rules)
    _check_validation(cfg.train, s.sizes, rules)
    _require(cfg.parallel.sp >= 1, "parallel.sp", f"must be >= 1, got {cfg.parallel.sp}")
    _require(cfg.parallel.timeout_s > 0, "parallel.timeout_s", f"must be > 0, got {cfg.parallel.timeout_s}")
    _require(cfg.train.max_nonfinite_steps >= 1, "train.max_nonfinite_steps", "must be >= 1")
    _require(heads % cfg.parallel.sp == 0, "parallel.sp", f"{heads} heads are not divisible by sp={cfg.parallel.sp}")
    _require(cfg.train.precision in ("auto", "fp32", "bf16"), "train.precision", f"unknown precision '{cfg.train.precision}'")
    _require(cfg.train.zero_stage in (0, 1, 2, 3), "train.zero_stage", f"must be 0..3, got {cfg.train.zero_stage}")
    _require(0.0 <= cfg.train.ema < 1.0, "train.ema", f"must be in [0, 1), got {cfg.train.ema}")
    _require(cfg.train.steps >= 1, "train.steps", "must be >= 1")
    _require(s.sampler in ("euler", "heun"), "sample.sampler", f"unknown sampler '{s.sampler}'")
    _require(s.shift >= 0, "sample.shift", f"must be >= 0 (0: the training's token-count shift), got {s.shift}")
    _require(s.first_frame in ("joint", "generate"), "sample.first_frame", f"unknown mode '{s.first_frame}' (joint | generate)")
    ffp = cfg.diffusion.first_frame_prob
    _require(0.0 <= ffp <= 1.0, "diffusion.first_frame_prob", f"must be in [0, 1], got {ffp}")
    problem = untrained_first_frame_mode(cfg, s.first_frame)
    _require(problem is None, "sample.first_frame", problem or "")
    _require(cfg.text.encoder in ("hash", "t5"), "text.encoder", f"unknown encoder '{cfg.text.encoder}'")
    _require(cfg.text.encoder != "t5" or bool(cfg.text.path), "text.path", "a local T5 directory is needed when text.encoder=t5")
    _require(cfg.text.source in ("auto", "cached", "online"), "text.source", f"unknown source '{cfg.text.source}' "
             "(auto | cached | online)")
    _require(cfg.text.cache_dtype in ("float16", "bfloat16", "float32"), "text.cache_dtype",
             f"unknown dtype '{cfg.text.cache_dtype}' (float16 | bfloat16 | float32)")
    _require(cfg.text.context_rows == 0 or cfg.text.context_rows >= cfg.text.max_tokens, "text.context_rows",
             f"{cfg.text.context_rows} rows cannot hold a caption of text.max_tokens={cfg.text.max_tokens} rows (0: off)")
    _require(cfg.text.dim % cfg.text.heads == 0, "text.heads", f"{cfg.text.heads} heads do not divide text.dim {cfg.text.dim}")
    _require(cfg.optim.lr > 0, "optim.lr", "must be > 0")
    lo = cfg.lora
    _require(lo.rank >= 0, "lora.rank", f"must be >= 0 (0: off), got {lo.rank}")
    _require(lo.alpha >= 0, "lora.alpha", f"must be >= 0 (0: = rank), got {lo.alpha}")
    _require(0.0 <= lo.dropout < 1.0, "lora.dropout", f"must be in [0, 1), got {lo.dropout}")
    _require(lo.rank == 0 or (len(lo.targets) > 0 and all(isinstance(t, str) and t for t in lo.targets)),
             "lora.targets", f"needs one or more module names, got {lo.targets}")


def _check_sizes(sizes: list, key: str, rules: ShapeRules) -> None:
    for i, size in enumerate(sizes):
        _require(isinstance(size, (list, tuple)) and len(size) == 3, f"{key}[{i}]", f"needs [frames, height, width], got {size}")
        _require(all(isinstance(x, int) for x in size), f"{key}[{i}]", f"needs integers, got {size}")
        problem = rules.problem(*size)
        _require(problem is None, f"{key}[{i}]", problem or "")


def _check_validation(t: TrainConfig, sample_sizes: list, rules: ShapeRules) -> None:
    _require(t.validate_every >= 0, "train.validate_every", f"must be >= 0 (0: off), got {t.validate_every}")
    _require(all(isinstance(p, str) and p.strip() for p in t.validate_prompts), "train.validate_prompts",
             f"needs a list of non-empty strings, got {t.validate_prompts!r}")
    _require(t.validate_every == 0 or len(t.validate_prompts) > 0, "train.validate_prompts",
             f"train.validate_every={t.validate_every} samples these prompts: give at least one")
    _require(t.validate_steps >= 0, "train.validate_steps", f"must be >= 0 (0: sample.steps), got {t.validate_steps}")
    _check_sizes(t.validate_sizes, "train.validate_sizes", rules)
    _require(t.validate_every == 0 or len(t.validate_sizes or sample_sizes) > 0, "train.validate_sizes",
             "validation needs at least one size (here or in sample.sizes)")


def uses_bf16(precision: str, device_type: str) -> bool:
    """train.precision on a device: bf16 when asked for, or `auto` on a GPU. Training and sampling
    both follow it, so a model samples in the precision it trained in (flash-attn takes no fp32)."""
    return precision == "bf16" or (precision == "auto" and device_type == "cuda")


def untrained_first_frame_mode(cfg: Config, mode: str) -> str | None:
    """Why a run trained with `cfg` cannot sample clips in `mode` (joint | generate | image), or None.
    A mode it never trained gives noise, not a worse sample."""
    trained = cfg.diffusion.first_frame_prob
    if mode == "joint" and trained >= 1:
        return "'joint': this run never denoised a whole clip (diffusion.first_frame_prob=1); use generate or an image"
    if mode != "joint" and trained <= 0:
        return f"'{mode}': this run never saw a given first frame (diffusion.first_frame_prob=0); use joint"
    if mode != "joint" and cfg.model.patch[0] != 1:
        return f"'{mode}' needs model.patch[0] = 1 (one latent frame per token frame), got {cfg.model.patch[0]}"
    return None


def _check_pretrained(cfg: Config) -> None:
    """model.pretrained decides the DiT's architecture: what else the config says of it must agree."""
    from sora.models.dit_io import architecture

    m = cfg.model
    try:
        arch = architecture(m.pretrained)[0]
    except (OSError, ValueError) as e:
        raise ConfigError(f"config key 'model.pretrained': {e}") from None
    _require(cfg.text.encoder != "hash", "text.encoder", "model.pretrained loads a DiT alone, so the hash encoder "
             "(trained with the DiT) would start from random weights: use the model's frozen encoder (text.encoder=t5 "
             "text.path=DIR)")
    for key in ("depth", "width", "heads"):
        mine = getattr(m, key)
        _require(mine in (0, arch[key]), f"model.{key}", f"{mine} contradicts model.pretrained '{m.pretrained}', whose "
                 f"DiT has {key} {arch[key]} (leave model.{key} unset)")
    _require(tuple(m.patch) == tuple(arch["patch"]), "model.patch", f"{list(m.patch)} contradicts model.pretrained "
             f"'{m.pretrained}', whose patch is {list(arch['patch'])} (set model.patch={list(arch['patch'])})")
    c_in, c_out = arch["channels"], arch["arch"].out_channels or arch["channels"]
    _require(c_in == c_out, "model.pretrained", f"'{m.pretrained}' reads {c_in} latent channels and writes {c_out}: "
             "training predicts the velocity of its input, so both must be equal")
    _require(cfg.vae.latent_channels == c_in, "vae.latent_channels", f"{cfg.vae.latent_channels} latent channels, but "
             f"model.pretrained '{m.pretrained}' reads {c_in}: use its VAE (vae.latent_channels={c_in})")


def resolved_dims(m: ModelConfig) -> tuple[int, int, int]:
    """(depth, width, heads): model.pretrained's, else from the size registry, each overridable."""
    from sora.models.dit import DIT_SIZES

    if m.pretrained:
        from sora.models.dit_io import architecture
        arch = architecture(m.pretrained)[0]
        return arch["depth"], arch["width"], arch["heads"]
    base = DIT_SIZES[m.size]
    return (m.depth or base["depth"], m.width or base["width"], m.heads or base["heads"])
