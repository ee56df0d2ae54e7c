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


# ---- Wan: the adapter and the merged model in diffusers --------------------------------------------

WAN = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=24, in_channels=4, out_channels=4,
           text_dim=16, freq_dim=32, ffn_dim=40, num_layers=2, cross_attn_norm=True,
           qk_norm="rms_norm_across_heads", rope_max_seq_len=64)
SHAPES, TEXT_LENS = [(1, 6, 4), (3, 4, 8), (5, 6, 6)], [5, 9, 1]     # (T, H, W): an image, odd frame counts


def _wan_outputs(model, lat, sig, text):
    """diffusers' forward, one sample at a time (timestep = 1000 * sigma)."""
    with torch.no_grad():
        return [model(x[None], (s * 1000).reshape(1), c[None]).sample[0] for x, s, c in zip(lat, sig, text)]


def _rel(out, ref):
    return max(float((o - r).abs().max()) / float(r.abs().max()) for o, r in zip(out, ref))


def test_wan_lora_exports_exactly_to_diffusers(tmp_path):
    """Our adapted Wan DiT (what training computes) = diffusers' model with our exported adapter
    loaded by WanPipeline.load_lora_weights = diffusers' model from our merged export."""
    pytest.importorskip("diffusers")
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

    from sora.export import write_diffusers
    from sora.models import load_dit

    seed = torch.randint(0, 2 ** 31 - 1, ()).item()
    torch.manual_seed(seed)
    ref = WanTransformer3DModel(**WAN).eval()
    _perturb(ref)
    ref.save_pretrained(tmp_path / "base")
    dit = load_dit(tmp_path / "base")
    apply_lora(dit, SimpleNamespace(rank=3, alpha=5.0, dropout=0.0, targets=TARGETS))
    _perturb(dit, only_trainable=True)
    adapter, scale = adapter_state(dit), lora_scale(3, 5.0)

    g = torch.Generator().manual_seed(seed)
    lat = [torch.randn(WAN["in_channels"], *s, generator=g) for s in SHAPES]
    sig = torch.rand(len(SHAPES), generator=g)
    text = [torch.randn(n, WAN["text_dim"], generator=g) for n in TEXT_LENS]
    with torch.no_grad():
        ours = dit.denoise(lat, sig, text)

    write_diffusers(load_dit(tmp_path / "base"), adapter, scale, tmp_path / "lora", "lora")
    file = load_file(str(tmp_path / "lora" / "pytorch_lora_weights.safetensors"))
    assert all(k.startswith("transformer.blocks.") and ".lora_" in k for k in file)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, transformer=WanTransformer3DModel.from_pretrained(
        tmp_path / "base"), vae=None, scheduler=FlowMatchEulerDiscreteScheduler())
    pipe.load_lora_weights(str(tmp_path / "lora"))
    loaded = {n for n, _ in pipe.transformer.named_parameters() if ".lora_" in n}
    assert len(loaded) == len(file) == 2 * 2 * 10    # blocks x (A, B) x (attn1 q k v out, attn2 q k v out, ffn 2)
    theirs = _wan_outputs(pipe.transformer, lat, sig, text)
    assert _rel(theirs, _wan_outputs(ref, lat, sig, text)) > 1e-2      # the adapter does change the output
    assert _rel(ours, theirs) < 1e-4

    write_diffusers(load_dit(tmp_path / "base"), adapter, scale, tmp_path / "full", "diffusers")
    merged = WanTransformer3DModel.from_pretrained(tmp_path / "full").eval()
    assert _rel(_wan_outputs(merged, lat, sig, text), theirs) < 1e-4


# ---- a whole LoRA run through the command line ------------------------------------------------------

@pytest.mark.slow
def test_lora_run_resumes_exactly_checkpoints_only_adapters_and_exports(world):
    """SIGKILL mid-run + restart: bitwise the losses, gradient norms and adapters of an uninterrupted
    run. Checkpoints hold the adapters, not the frozen base; the base is rebuilt for the merged final
    weights, `sora export` and `sora sample` of a run whose final/ holds only the adapter."""
    steps, lora = 6, ["lora.rank=4", "lora.alpha=8", "run.save_every=2"]
    ref = world / "lora-ref"
    r = sora(*dit_args(world, ref, steps, *lora, "lora.save_merged=true"), cwd=world)
    assert r.returncode == 0, r.stderr[-3000:]

    run = world / "lora-killed"
    proc = subprocess.Popen([sys.executable, "-m", "sora.cli", *dit_args(world, run, steps, *lora)],
                            cwd=world, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: newest(run) == "step00000001", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert max(metrics(run)) < steps - 1, "the run ended before it could be killed mid-way"
    r = sora(*dit_args(world, run, steps, *lora), cwd=world)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stderr
    a, b = metrics(ref), metrics(run)
    for s in range(steps):
        assert (a[s]["loss"], a[s]["grad_norm"]) == (b[s]["loss"], b[s]["grad_norm"]), s

    for name in ("adapter", "adapter_ema"):
        want, got = load_file(str(ref / "final" / f"{name}.safetensors")), load_file(str(run / "final" / f"{name}.safetensors"))
        assert sorted(want) == sorted(got) and all(".lora_" in k for k in want)
        assert all(torch.equal(want[k], got[k]) for k in want)
    assert not (run / "final" / "model.safetensors").exists()           # merged only on request
    states = torch.load(run / "checkpoints" / newest(run) / "zero_pp_rank_0_mp_rank_00_model_states.pt",
                        weights_only=False)   # ZeRO-3: parameters live in the optimizer's fp32 partitions
    assert states["frozen_param_shapes"] is None and states["frozen_param_fragments"] is None
    optimized = [n for group in states["param_shapes"] for n in group]
    assert len(optimized) == 2 * 7 * 2 and all(".lora_" in n for n in optimized)   # blocks x targets x (A, B)
    assert sorted(states["module"]) == sorted(optimized)

    # the merged weights: written by the run, rebuilt from the adapter-only run, exported offline
    from sora.train.artifacts import final_weights

    merged = load_file(str(ref / "final" / "model.safetensors"))
    cfg, rebuilt = final_weights(run, ema=False)
    assert cfg.lora.rank == 0 and sorted(rebuilt) == sorted(merged)
    assert all(torch.equal(rebuilt[k], merged[k]) for k in merged)
    out = world / "lora-export.safetensors"
    r = sora("export", "--run", str(run), "--out", str(out), cwd=world)
    assert r.returncode == 0, r.stderr[-3000:]
    exported = load_file(str(out))
    assert sorted(exported) == sorted(merged)
    assert all(torch.equal(exported[k], merged[k]) for k in merged)
    r = sora("export", "--run", str(run), "--out", str(world / "x"), "--format", "lora", cwd=world)
    assert r.returncode == 2 and "not a Wan transformer" in r.stderr
    r = sora("sample", "--run", str(run), "--prompt", "a red circle moving up", "--frames", "5", "--height", "32",
             "--width", "48", "--steps", "2", "--out", str(world / "lora.gif"), cwd=world)
    assert r.returncode == 0, r.stderr[-3000:]
