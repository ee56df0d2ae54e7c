"""Wan 2.1 / 2.2 transformers (diffusers `WanTransformer3DModel`) as our DiT: config and weights.

A Wan transformer is our DiT with the `DiTArch` switches set (`wan_dit_kwargs`), and its weights
map one-to-one onto ours (`RULES`) up to three row permutations that make our kernels compute
exactly what Wan does:
- RoPE: Wan rotates interleaved pairs (2i, 2i+1) of each (t, h, w) section; ours rotate-half pairs
  (i, i + d/2) with the same per-section frequencies theta^(-2i/d). Reordering the q and k
  projection rows (and the q/k norm weights) of every head, section by section, to [even dims,
  odd dims] turns one into the other; q.k is unchanged by a permutation common to q and k, and v
  is untouched, so every RoPE backend works as it is.
- proj_out: Wan orders a token's output values (pt, ph, pw, C); our unpatchify (C, pt, ph, pw).
- the fused projections: self-attention q|k|v and cross-attention k|v are one Linear each here.
`to_diffusers` applies the inverses, so a round trip is exact.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sora.models.dit import AcrossHeadsRMSNorm, DiTArch

CLASS_NAME = "WanTransformer3DModel"
ROPE_THETA = 10000.0   # fixed in WanRotaryPosEmbed
NORM_EPS = 1e-6        # our adaLN and norm layers' epsilon
# config.json keys read, with diffusers' defaults (WanTransformer3DModel.__init__)
DEFAULTS = dict(patch_size=[1, 2, 2], num_attention_heads=40, attention_head_dim=128, in_channels=16,
                out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None, added_kv_proj_dim=None,
                rope_max_seq_len=1024, pos_embed_seq_len=None)


def wan_rope_sections(head_dim: int) -> tuple[int, int, int]:
    """(t, h, w) split of a head dim, as WanRotaryPosEmbed: h = w = 2 * (d // 6), t the rest."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def wan_config(raw: dict, where: str = "config.json") -> dict:
    """A diffusers config.json dict -> the keys we use, checked; unsupported variants say what is missing."""
    if raw.get("_class_name", CLASS_NAME) != CLASS_NAME:
        raise ValueError(f"{where}: _class_name {raw.get('_class_name')!r} is not {CLASS_NAME}")
    cfg = {k: raw.get(k, v) for k, v in DEFAULTS.items()}
    if cfg["image_dim"] is not None or cfg["added_kv_proj_dim"] is not None:
        raise ValueError(f"{where}: a Wan image-to-video transformer (image_dim={cfg['image_dim']}, added_kv_proj_dim="
                         f"{cfg['added_kv_proj_dim']}) needs CLIP image tokens and added k/v projections in "
                         "cross-attention, which our DiT does not have yet")
    if cfg["qk_norm"] not in ("rms_norm_across_heads", None):
        raise ValueError(f"{where}: qk_norm {cfg['qk_norm']!r} is not supported (rms_norm_across_heads or null)")
    if not math.isclose(cfg["eps"], NORM_EPS):
        raise ValueError(f"{where}: eps {cfg['eps']} is not supported (our adaLN kernels use {NORM_EPS})")
    if len(cfg["patch_size"]) != 3:
        raise ValueError(f"{where}: patch_size {cfg['patch_size']} must be (pt, ph, pw)")
    d = cfg["attention_head_dim"]
    if d % 2 or min(wan_rope_sections(d)) < 2:
        raise ValueError(f"{where}: attention_head_dim {d} gives RoPE sections {wan_rope_sections(d)}; need even d >= 6")
    cfg["out_channels"] = cfg["out_channels"] or cfg["in_channels"]
    return cfg


def wan_dit_kwargs(cfg: dict) -> dict:
    """A checked Wan config (wan_config) -> keyword arguments of DiT."""
    heads, d = cfg["num_attention_heads"], cfg["attention_head_dim"]
    arch = DiTArch(out_channels=cfg["out_channels"], ffn_dim=cfg["ffn_dim"], qk_norm_across_heads=True,
                   rope_sections=wan_rope_sections(d), text_mlp=True, pooled_text=False, frame_embed=False,
                   final_silu=False, cross_norm=bool(cfg["cross_attn_norm"]), t_freq_dim=cfg["freq_dim"],
                   given="clean_time")
    return dict(channels=cfg["in_channels"], patch=tuple(cfg["patch_size"]), width=heads * d, depth=cfg["num_layers"],
                heads=heads, text_dim=cfg["text_dim"], qk_norm=cfg["qk_norm"] is not None, rope_theta=ROPE_THETA,
                arch=arch)


def is_wan(model) -> bool:
    a = model.arch
    return a.qk_norm_across_heads and a.text_mlp and not (a.pooled_text or a.frame_embed or a.final_silu) \
        and a.given == "clean_time"


def config_of(model) -> dict:
    """The diffusers config of a Wan-switched DiT (its dims read off the model)."""
    if not is_wan(model):
        raise ValueError("this DiT is not a Wan transformer (its DiTArch switches are ours): it has no diffusers form")
    attn = model.blocks[0].attn
    # keys that change nothing we compute (rope_max_seq_len: the longest axis diffusers' RoPE table
    # holds) come from the config the model was loaded with (load_dit keeps it as `wan_config`)
    return {**DEFAULTS, **getattr(model, "wan_config", {}), **dict(
                patch_size=list(model.patch), num_attention_heads=attn.heads, attention_head_dim=attn.head_dim,
                in_channels=model.channels, out_channels=model.out_channels, text_dim=model.text_mlp[0].in_features,
                freq_dim=model.arch.t_freq_dim, ffn_dim=model.blocks[0].mlp[0].out_features,
                num_layers=len(model.blocks), cross_attn_norm=model.arch.cross_norm,
                qk_norm="rms_norm_across_heads" if isinstance(attn.q_norm, AcrossHeadsRMSNorm) else None, eps=NORM_EPS)}


# ---- the weight mapping ------------------------------------------------------------------------

@dataclass
class Rule:
    """Our tensor `ours` [shape] = rows `perm` of the diffusers tensors `theirs` concatenated on dim 0
    (each reshaped to our rank)."""
    ours: str
    theirs: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]   # the diffusers tensors' shapes
    shape: tuple[int, ...]                # ours
    perm: torch.Tensor | None = None      # [shape[0]] our row r is their (concatenated) row perm[r]


def rope_perm(sections) -> torch.Tensor:
    """[Dh]: our head dim j holds Wan's dim perm[j] (each section's even dims, then its odd ones)."""
    parts, start = [], 0
    for d in sections:
        parts += [start + torch.arange(0, d, 2), start + torch.arange(1, d, 2)]
        start += d
    return torch.cat(parts)


def rules(cfg: dict) -> list[Rule]:
    heads, d = cfg["num_attention_heads"], cfg["attention_head_dim"]
    w, ffn, c_in, c_out = heads * d, cfg["ffn_dim"], cfg["in_channels"], cfg["out_channels"]
    patch = tuple(cfg["patch_size"])
    p = math.prod(patch)
    head_perm = (torch.arange(heads)[:, None] * d + rope_perm(wan_rope_sections(d))[None]).flatten()  # [W]
    qkv_perm = torch.cat([head_perm, w + head_perm, 2 * w + torch.arange(w)])
    # our output row c*P + q is their row q*C + c
    out_perm = (torch.arange(p)[None, :] * c_out + torch.arange(c_out)[:, None]).flatten()

    out: list[Rule] = []

    def linear(ours, theirs, n_out, n_in, perm=None):
        theirs = (theirs,) if isinstance(theirs, str) else theirs
        rows = n_out * len(theirs)
        out.append(Rule(f"{ours}.weight", tuple(f"{t}.weight" for t in theirs), ((n_out, n_in),) * len(theirs),
                        (rows, n_in), perm))
        out.append(Rule(f"{ours}.bias", tuple(f"{t}.bias" for t in theirs), ((n_out,),) * len(theirs), (rows,), perm))

    def vector(ours, theirs, n, perm=None):
        out.append(Rule(ours, (theirs,), ((n,),), (n,), perm))

    out.append(Rule("patch_embed.weight", ("patch_embedding.weight",), ((w, c_in) + patch,), (w, c_in * p)))
    vector("patch_embed.bias", "patch_embedding.bias", w)
    ce = "condition_embedder"
    linear("t_embed.mlp.0", f"{ce}.time_embedder.linear_1", w, cfg["freq_dim"])
    linear("t_embed.mlp.2", f"{ce}.time_embedder.linear_2", w, w)
    linear("text_mlp.0", f"{ce}.text_embedder.linear_1", w, cfg["text_dim"])
    linear("text_mlp.2", f"{ce}.text_embedder.linear_2", w, w)
    linear("ada_single.1", f"{ce}.time_proj", 6 * w, w)
    for i in range(cfg["num_layers"]):
        o, t = f"blocks.{i}", f"blocks.{i}"
        linear(f"{o}.attn.qkv", (f"{t}.attn1.to_q", f"{t}.attn1.to_k", f"{t}.attn1.to_v"), w, w, qkv_perm)
        linear(f"{o}.attn.proj", f"{t}.attn1.to_out.0", w, w)
        linear(f"{o}.cross.q", f"{t}.attn2.to_q", w, w)
        linear(f"{o}.cross.kv", (f"{t}.attn2.to_k", f"{t}.attn2.to_v"), w, w)
        linear(f"{o}.cross.proj", f"{t}.attn2.to_out.0", w, w)
        if cfg["qk_norm"] is not None:
            vector(f"{o}.attn.q_norm.norm.weight", f"{t}.attn1.norm_q.weight", w, head_perm)
            vector(f"{o}.attn.k_norm.norm.weight", f"{t}.attn1.norm_k.weight", w, head_perm)
            vector(f"{o}.cross.q_norm.norm.weight", f"{t}.attn2.norm_q.weight", w)
            vector(f"{o}.cross.k_norm.norm.weight", f"{t}.attn2.norm_k.weight", w)
        if cfg["cross_attn_norm"]:
            vector(f"{o}.cross_norm.weight", f"{t}.norm2.weight", w)
            vector(f"{o}.cross_norm.bias", f"{t}.norm2.bias", w)
        linear(f"{o}.mlp.0", f"{t}.ffn.net.0.proj", ffn, w)
        linear(f"{o}.mlp.2", f"{t}.ffn.net.2", w, ffn)
        out.append(Rule(f"{o}.ada_table", (f"{t}.scale_shift_table",), ((1, 6, w),), (6, w)))
    out.append(Rule("final.ada_table", ("scale_shift_table",), ((1, 2, w),), (2, w)))
    linear("final.linear", "proj_out", c_out * p, w, out_perm)
    return out


def from_diffusers(theirs: dict, cfg: dict) -> dict[str, torch.Tensor]:
    """A diffusers Wan state dict (any mapping name -> tensor, e.g. lazy safetensors) -> our DiT's."""
    table = rules(cfg)
    expected = {k for r in table for k in r.theirs}
    missing = sorted(expected - set(theirs))
    unexpected = sorted(set(theirs) - expected - {k for k in theirs if "norm_added_q" in k})  # diffusers ignores it
    if missing or unexpected:
        raise ValueError(f"the weights do not match the Wan config: missing {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                         f"{' ...' if len(unexpected) > 5 else ''}")
    ours = {}
    for r in table:
        parts = [theirs[k] for k in r.theirs]
        for k, x, shape in zip(r.theirs, parts, r.shapes):
            if tuple(x.shape) != shape:
                raise ValueError(f"'{k}' has shape {tuple(x.shape)}, the config says {shape}")
        x = parts[0].reshape(r.shape) if len(parts) == 1 else torch.cat(parts)      # a view when it can be
        ours[r.ours] = x if r.perm is None else x[r.perm]
    return ours


def to_diffusers(ours: dict, cfg: dict) -> dict[str, torch.Tensor]:
    """Our DiT's state dict -> the diffusers Wan one (the inverse of from_diffusers)."""
    theirs = {}
    for r in rules(cfg):
        x = ours[r.ours]
        if r.perm is not None:
            x = x[torch.argsort(r.perm)]
        for k, part, shape in zip(r.theirs, x.split([s[0] if len(r.theirs) > 1 else r.shape[0]
                                                     for s in r.shapes]), r.shapes):
            theirs[k] = part.reshape(shape).contiguous()
    return theirs
