"""LoRA adapters on the DiT's blocks, through peft.

`apply_lora` freezes the whole model and injects peft LoRA layers into the linear projections of
every DiT block named by `lora.targets` (module names inside a block: `attn.qkv`, `mlp.0`, ...);
only the adapter matrices train. Under peft a target `X` becomes `X.base_layer` (the frozen
linear) plus `X.lora_A.default` [r, in] and `X.lora_B.default` [out, r]; its output is
`base(x) + scale * B(A(dropout(x)))` with scale = alpha / r.

On disk (checkpoints' EMA, `final/adapter*.safetensors`) adapters use the plain names
`dit.blocks.0.attn.qkv.lora_A.weight`: peft's `.default` and `.base_layer` removed, so base and
adapter keys live in the model's own naming and `merge_lora` adds `scale * B @ A` to `X.weight`.
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


def apply_lora(model: nn.Module, lora) -> nn.Module:
    """Freeze `model` (a TextToVideo) and inject LoRA (config section `lora`) into `model.dit`."""
    from peft import LoraConfig, inject_adapter_in_model

    linears = {n for n, m in model.dit.named_modules() if isinstance(m, nn.Linear)}
    pattern = re.compile(_target_regex(lora.targets))
    for target in lora.targets:
        if not any(re.fullmatch(_target_regex([target]), n) for n in linears):
            known = sorted({n.split(".", 2)[2] for n in linears if re.match(r"blocks\.\d+\.", n)})
            raise ValueError(f"config key 'lora.targets': '{target}' is no linear layer of a DiT block; "
                             f"known: {', '.join(known)}")
    model.requires_grad_(False)
    rank = int(lora.rank)
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=lora.alpha or rank, lora_dropout=lora.dropout,
                                       target_modules=pattern.pattern, bias="none"), model.dit)
    for name, p in model.named_parameters():
        p.requires_grad_(".lora_" in name)
    return model


def plain_name(name: str) -> str:
    """peft's parameter name -> the plain one: `...qkv.base_layer.weight` -> `...qkv.weight`,
    `...qkv.lora_A.default.weight` -> `...qkv.lora_A.weight`."""
    return name.replace(".base_layer.", ".").replace(".default.", ".")


def peft_name(name: str, peft_names: set[str]) -> str:
    """The inverse of plain_name within a model whose parameter names are `peft_names`."""
    for cand in (name, name.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default."),
                 name.rsplit(".", 1)[0] + ".base_layer." + name.rsplit(".", 1)[1]):
        if cand in peft_names:
            return cand
    raise KeyError(name)


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
