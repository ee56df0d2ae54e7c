"""LoRA adapters on the DiT's blocks, through peft.

`apply_lora` freezes a DiT and injects peft LoRA layers into the linear projections of every
block named by `lora.targets` (module names inside a block: `attn.qkv`, `mlp.0`, ...);
only the adapter matrices train. Under peft a target `X` becomes `X.base_layer` (the frozen
linear) plus `X.lora_A.default` [r, in] and `X.lora_B.default` [out, r]; its output is
`base(x) + scale * B(A(dropout(x)))` with scale = alpha / r.

On disk (checkpoints' EMA, `final/adapter*.safetensors`) adapters use the plain names
`dit.blocks.0.attn.qkv.lora_A.weight`: peft's `.default` and `.base_layer` removed, so base and
adapter keys live in the model's own naming and `merge_lora` adds `scale * B @ A` to `X.weight`.

`lora_to_diffusers` writes an adapter in diffusers' peft format for a Wan transformer
(`transformer.blocks.0.attn1.to_q.lora_A.weight`, ...), which `WanPipeline.load_lora_weights`
loads. It is exact: our fused q|k|v (and cross k|v) projection's update B @ A splits by rows of B
into to_q / to_k / to_v updates B_q @ A, B_k @ A, B_v @ A that share A, so each diffusers layer
gets a rank-r LoRA (A copied, B's rows) with the same product; the Wan mapping's row
permutations (RoPE, wan.py) apply to B's rows like to the weight's. Diffusers loads such a file
without alphas (scale 1), so the scale alpha / r is folded into B.
"""
from __future__ import annotations

import re

import torch
import torch.nn as nn

ADAPTER_META = ("lora_rank", "lora_alpha", "lora_targets")   # safetensors metadata of an adapter file


def lora_scale(rank: int, alpha: float) -> float:
    """alpha / rank; alpha 0 means alpha = rank (scale 1)."""
    return (alpha or rank) / rank


def _target_regex(targets) -> str:
    """peft full-matches a string target against module names: only the blocks' own projections
    (a bare `mlp.0` would also catch the timestep embedder's MLP)."""
    return r"blocks\.\d+\.(?:" + "|".join(re.escape(t) for t in targets) + ")"


def apply_lora(dit: nn.Module, lora) -> nn.Module:
    """Freeze `dit` (a DiT) and inject LoRA (config section `lora`) into its blocks' `lora.targets`."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as e:  # optional dependency
        raise ImportError("lora.rank > 0 needs the optional 'peft' package (pip install 'sora[lora]')") from e

    linears = {n for n, m in dit.named_modules() if isinstance(m, nn.Linear)}
    for target in lora.targets:
        if not any(re.fullmatch(_target_regex([target]), n) for n in linears):
            known = sorted({n.split(".", 2)[2] for n in linears if re.match(r"blocks\.\d+\.", n)})
            raise ValueError(f"config key 'lora.targets': '{target}' is no linear layer of a DiT block; "
                             f"known: {', '.join(known)}")
    dit.requires_grad_(False)
    rank = int(lora.rank)
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=lora.alpha or rank, lora_dropout=lora.dropout,
                                       target_modules=_target_regex(lora.targets), bias="none"), dit)
    for name, p in dit.named_parameters():
        p.requires_grad_(".lora_" in name)
    return dit


def adapter_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA matrices of `module`, plain names."""
    return {plain_name(n): p.detach() for n, p in module.named_parameters() if ".lora_" in n}


def plain_name(name: str) -> str:
    """peft's parameter name -> the plain one: `...qkv.base_layer.weight` -> `...qkv.weight`,
    `...qkv.lora_A.default.weight` -> `...qkv.lora_A.weight`."""
    return name.replace(".base_layer.", ".").replace(".default.", ".")


def trained_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of what trains: every parameter, or only the adapters under LoRA."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def merge_lora(base: dict[str, torch.Tensor], adapter: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """Full weights (plain names) with each adapter folded in: W + scale * B @ A (in float32)."""
    out = dict(base)
    for key in adapter:
        if not key.endswith(".lora_A.weight"):
            continue
        stem = key[: -len(".lora_A.weight")]
        a, b = adapter[key].float(), adapter[stem + ".lora_B.weight"].float()     # [r, in], [out, r]
        w = base[stem + ".weight"]
        out[stem + ".weight"] = (w.float() + scale * (b @ a)).to(w.dtype)
    return out


def adapter_metadata(lora) -> dict[str, str]:
    return {"lora_rank": str(int(lora.rank)), "lora_alpha": repr(float(lora.alpha or lora.rank)),
            "lora_targets": ",".join(lora.targets)}


def lora_to_diffusers(adapter: dict[str, torch.Tensor], rules, scale: float) -> dict[str, torch.Tensor]:
    """A Wan DiT's adapter (plain names relative to the DiT, `blocks.0.attn.qkv.lora_A.weight`) ->
    diffusers' peft-format keys with the `transformer.` prefix. `rules`: the Wan weight mapping
    (sora.models.wan.rules), which splits and permutes only output rows of the adapted layers."""
    by_ours = {r.ours: r for r in rules}
    out = {}
    for key in sorted(adapter):
        if not key.endswith(".lora_A.weight"):
            continue
        stem = key[: -len(".lora_A.weight")]
        rule = by_ours[stem + ".weight"]
        a = adapter[key].float()                                                 # [r, in]
        b = adapter[stem + ".lora_B.weight"].float() * scale                     # [out, r]
        if rule.perm is not None:
            b = b[torch.argsort(rule.perm)]                                      # their row order
        for theirs, part in zip(rule.theirs, b.split([shape[0] for shape in rule.shapes])):
            layer = "transformer." + theirs[: -len(".weight")]
            out[layer + ".lora_A.weight"] = a.clone()
            out[layer + ".lora_B.weight"] = part.contiguous()
    return out
