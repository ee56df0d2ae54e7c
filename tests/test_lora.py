"""LoRA (peft) on the DiT: targets, merge, the Wan adapter export against diffusers' own LoRA loading,
and a whole LoRA run (exact resume after SIGKILL, adapters-only checkpoints, export, sampling).

The diffusers checks use tiny random WanTransformer3DModels made here (nothing is downloaded), every
weight and every adapter perturbed so that no zero init hides a mapping error; parity is fp32,
relative to the output's scale.
"""
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from sora.config import ConfigError, load_config
from sora.models.lora import adapter_state, apply_lora, lora_scale, merge_lora, plain_name
from sora.models.t2v import TextToVideo, initial_model
from tests.cli_runs import dit_args, env, metrics, newest, sora, wait_for

TINY = ["model.depth=2", "model.width=48", "model.heads=4", "text.dim=32", "text.layers=1"]
TARGETS = ["attn.qkv", "attn.proj", "cross.q", "cross.kv", "cross.proj", "mlp.0", "mlp.2"]


def _perturb(module, only_trainable=False):
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad or not only_trainable:
                p.add_(torch.randn_like(p) * 0.1)


def test_lora_adapts_only_the_blocks_targets_and_merges_exactly():
    cfg = load_config("configs/demo.yaml", TINY + ["lora.rank=3", "lora.alpha=6"])
    model = TextToVideo(cfg)
    _perturb(model)                           # out of the zero-init gates and final layer
    model.add_lora(cfg.lora)
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    # every target of every block, A and B, nothing else (the timestep MLP's mlp.0 is no target)
    assert sorted(trained) == sorted(f"dit.blocks.{i}.{t}.lora_{ab}.default.weight"
                                     for i in range(2) for t in TARGETS for ab in "AB")
    _perturb(model, only_trainable=True)      # B starts at zero: make the adapters do something
    # merged weights in a plain model compute what peft's adapted forward computes
    base = {plain_name(k): v for k, v in model.state_dict().items() if ".lora_" not in k}
    merged = TextToVideo(cfg)
    merged.load_state_dict(merge_lora(base, adapter_state(model), lora_scale(3, 6.0)))
    batch_args = _tiny_batch(cfg, model)
    out, want = model(*batch_args), merged(*batch_args)
    plain = TextToVideo(cfg)
    plain.load_state_dict(base)
    assert not torch.allclose(out, plain(*batch_args), atol=1e-3)     # the adapters do change the output
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


def _tiny_batch(cfg, model):
    from sora.data.packing import PackItem, pack

    g = torch.Generator().manual_seed(torch.randint(0, 2 ** 31 - 1, ()).item())
    c = cfg.vae.latent_channels
    b = pack([PackItem(torch.randn(c, t, 2 * h, 2 * w, generator=g), (t, h, w), cap, str(i))
              for i, ((t, h, w), cap) in enumerate([((1, 2, 3), "a red circle"), ((3, 2, 2), "")])])
    return b.latents, model.layout(b.cu_seqlens, b.grid), torch.rand(2, generator=g), b.captions


def test_lora_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="lora.rank"):
        load_config("configs/demo.yaml", ["lora.rank=-1"])
    with pytest.raises(ConfigError, match="lora.dropout"):
        load_config("configs/demo.yaml", ["lora.dropout=1.5"])
    cfg = load_config("configs/demo.yaml", TINY + ["lora.rank=2", "lora.targets=[attn.qkv, mlp.1]"])
    with pytest.raises(ValueError, match="lora.targets.*'mlp.1'.*known: .*attn.qkv"):
        initial_model(cfg)
