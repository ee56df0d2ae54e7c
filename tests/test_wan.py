"""Wan 2.1 / 2.2 transformers as our DiT: `load_dit`, `DiT.denoise`, `save_dit` against diffusers.

Tiny random WanTransformer3DModels are made with diffusers here (nothing is downloaded); their head
dims (24, 12) give non-trivial RoPE sections ((8, 8, 8), (4, 4, 4)); the Triton attention kernel needs
head dims that are multiples of 8, so the every-backend test uses the 24 and every parameter is
perturbed so that no zero-initialised weight hides a mapping error. Parity is per sample against
diffusers' own forward, fp32, relative to the output's scale.
"""
import json

import pytest
import torch
import yaml

diffusers = pytest.importorskip("diffusers")
from diffusers import WanTransformer3DModel  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from sora.models import load_dit, save_dit  # noqa: E402
from sora.models import wan  # noqa: E402

TOL = 1e-4      # of the output's scale, fp32
T2V = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=24, in_channels=4, out_channels=5,
           text_dim=16, freq_dim=32, ffn_dim=40, num_layers=2, cross_attn_norm=True,
           qk_norm="rms_norm_across_heads", rope_max_seq_len=64)
# Wan 2.2 TI2V-like: in = out channels, per-token timestep (first frame clean), no cross-attn norm
TI2V = dict(T2V, num_attention_heads=3, attention_head_dim=12, in_channels=6, out_channels=6, cross_attn_norm=False)
SHAPES = [(1, 6, 4), (3, 4, 8), (5, 6, 6), (1, 4, 6)]      # (T, H, W): images, odd frame counts, two aspects
TEXT_LENS = [5, 9, 3, 1]


def _diffusers_model(cfg, seed):
    torch.manual_seed(seed)
    m = WanTransformer3DModel(**cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m


@pytest.fixture(scope="module")
def t2v_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("wan_t2v")
    ref = _diffusers_model(T2V, seed=torch.randint(0, 2 ** 31 - 1, ()).item())
    ref.save_pretrained(d)
    return d, ref


def _inputs(cfg, seed=None):
    g = torch.Generator().manual_seed(torch.randint(0, 2 ** 31 - 1, ()).item() if seed is None else seed)
    lat = [torch.randn(cfg["in_channels"], *s, generator=g) for s in SHAPES]
    sig = torch.rand(len(SHAPES), generator=g)
    text = [torch.randn(n, cfg["text_dim"], generator=g) for n in TEXT_LENS]
    return lat, sig, text


def _timestep(x, sigma, patch, first_frame):
    """diffusers' timestep for one sample: [1], or [1, L] with the first token frame at 0."""
    ts = (sigma * 1000).reshape(1)
    if not first_frame:
        return ts
    t, h, w = (s // p for s, p in zip(x.shape[1:], patch))
    ts = ts.expand(1, t * h * w).clone()
    ts[0, :h * w] = 0
    return ts


def _reference(ref, lat, sig, text, first_frame=None):
    first_frame = first_frame or [False] * len(lat)
    return [ref(x[None], _timestep(x, s, ref.config.patch_size, f), c[None]).sample[0]
            for x, s, c, f in zip(lat, sig, text, first_frame)]


def _rel(out, ref):
    return max(float((o - r).abs().max()) / float(r.abs().max()) for o, r in zip(out, ref))


def test_denoise_matches_diffusers_on_a_packed_mix(t2v_dir):
    d, ref = t2v_dir
    model = load_dit(d)
    lat, sig, text = _inputs(T2V)
    with torch.no_grad():
        out, expect = model.denoise(lat, sig, text), _reference(ref, lat, sig, text)
    assert [o.shape for o in out] == [e.shape for e in expect]
    assert out[0].shape == (5, 1, 6, 4)                          # out_channels differ from in_channels
    assert _rel(out, expect) < TOL


def test_gradients_match_diffusers(t2v_dir):
    d, ref = t2v_dir
    model = load_dit(d)
    lat, sig, text = _inputs(T2V)
    lat_ours = [x.clone().requires_grad_() for x in lat]
    lat_ref = [x.clone().requires_grad_() for x in lat]
    weights = [torch.randn(ref.config.out_channels, *s) for s in SHAPES]
    sum(torch.sum(o * w) for o, w in zip(model.denoise(lat_ours, sig, text), weights)).backward()
    ref.zero_grad()
    sum(torch.sum(o * w) for o, w in zip(_reference(ref, lat_ref, sig, text), weights)).backward()
    cfg = wan.wan_config(ref.config)
    expect = wan.from_diffusers({k: p.grad for k, p in ref.named_parameters()}, cfg)   # mapped like the weights
    for name, p in model.named_parameters():
        scale = float(expect[name].abs().max())
        assert float((p.grad - expect[name]).abs().max()) <= TOL * scale, name
    assert _rel([x.grad for x in lat_ours], [x.grad for x in lat_ref]) < TOL


def test_ti2v_first_frame_clean_matches_per_token_timestep(tmp_path):
    ref = _diffusers_model(TI2V, seed=torch.randint(0, 2 ** 31 - 1, ()).item())
    ref.save_pretrained(tmp_path)
    model = load_dit(tmp_path)
    lat, sig, text = _inputs(TI2V)
    first = [False, True, True, True]                            # an image given clean: all of it at t = 0
    with torch.no_grad():
        out, expect = model.denoise(lat, sig, text, first), _reference(ref, lat, sig, text, first)
        plain = model.denoise(lat, sig, text)
    assert _rel(out, expect) < TOL
    assert _rel(plain[1:2], out[1:2]) > 1e-3                     # the flag changes the clip's output


def test_save_dit_round_trips_through_diffusers_exactly(t2v_dir, tmp_path):
    d, ref = t2v_dir
    save_dit(load_dit(d), tmp_path / "out")
    back = WanTransformer3DModel.from_pretrained(tmp_path / "out", local_files_only=True)
    a, b = ref.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert written["_class_name"] == "WanTransformer3DModel" and "_diffusers_version" in written
    assert all(written[k] == ref.config[k] or list(written[k]) == list(ref.config[k]) for k in wan.DEFAULTS)


def test_sharded_checkpoints_load_and_save(t2v_dir, tmp_path):
    d, ref = t2v_dir
    ref.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    whole, sharded = load_dit(d).state_dict(), load_dit(tmp_path / "sharded").state_dict()
    assert all(torch.equal(whole[k], sharded[k]) for k in whole)
    out = save_dit(load_dit(tmp_path / "sharded"), tmp_path / "resaved", max_shard_bytes=20_000)
    assert len(list(out.glob("*.safetensors"))) > 1
    back = WanTransformer3DModel.from_pretrained(out, local_files_only=True).state_dict()
    assert all(torch.equal(ref.state_dict()[k], back[k]) for k in back)


@pytest.mark.parametrize("backend", ["torch", "cpp", "triton"])
def test_denoise_on_every_cpu_backend(t2v_dir, backend):
    d, ref = t2v_dir
    model = load_dit(d, backend=backend)
    served = {op for op, name in model.kernels.names.items() if name == backend}
    assert served, model.kernels.names
    lat, sig, text = _inputs(T2V)
    first = [False, True, False, True]
    with torch.no_grad():
        out, expect = model.denoise(lat, sig, text, first), _reference(ref, lat, sig, text, first)
    assert _rel(out, expect) < TOL, model.kernels.names


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_denoise_on_the_gpu_backends(t2v_dir, backend):
    """What a GPU user runs: the packed pass on the CUDA kernels against diffusers' per-sample forward
    on the same device, fp32 (flash-attn takes bf16 only: the trainer's bf16 tests run it)."""
    d, ref = t2v_dir
    model = load_dit(d, device="cuda", backend=backend)
    ref = ref.to("cuda")
    lat, sig, text = _inputs(T2V)
    lat, sig, text = [x.cuda() for x in lat], sig.cuda(), [c.cuda() for c in text]
    first = [False, True, False, True]
    with torch.no_grad():
        out, expect = model.denoise(lat, sig, text, first), _reference(ref, lat, sig, text, first)
    assert _rel(out, expect) < TOL, model.kernels.names


# ---------------------------------------------------------------- our own runs, bad input

def test_load_dit_reads_our_runs_and_exports(tmp_path):
    from sora.config import load_config, to_dict
    from sora.export import CONFIG_KEY
    from sora.models.t2v import TextToVideo

    cfg = load_config("configs/demo.yaml", ["model.depth=1", "model.width=32", "model.heads=2", "vae.latent_channels=4"])
    model = TextToVideo(cfg)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    (tmp_path / "run" / "final").mkdir(parents=True)
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
    save_file(state, str(tmp_path / "run" / "final" / "ema.safetensors"))
    save_file(state, str(tmp_path / "export.safetensors"), metadata={CONFIG_KEY: yaml.safe_dump(to_dict(cfg))})
    for path in (tmp_path / "run", tmp_path / "export.safetensors"):
        dit = load_dit(path)
        assert dit.state_dict().keys() == model.dit.state_dict().keys()
        assert all(torch.equal(v, model.dit.state_dict()[k]) for k, v in dit.state_dict().items())
    with pytest.raises(ValueError, match="not a Wan transformer"):
        save_dit(dit, tmp_path / "nope")


def test_bad_paths_and_configs_are_refused_clearly(t2v_dir, tmp_path):
    d, ref = t2v_dir
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        load_dit("Wan-AI/Wan2.1-T2V-1.3B-Diffusers")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a local diffusers model directory"):
        load_dit(tmp_path / "empty")
    bad = tmp_path / "i2v"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"_class_name": "WanTransformer3DModel", "image_dim": 1280,
                                                 "added_kv_proj_dim": 5120}))
    with pytest.raises(ValueError, match="CLIP image tokens and added k/v"):
        load_dit(bad)
    (bad / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLWan"}))
    with pytest.raises(ValueError, match="is not WanTransformer3DModel"):
        load_dit(bad)
    (bad / "config.json").write_text(json.dumps(dict(ref.config, _class_name="WanTransformer3DModel")))
    with pytest.raises(FileNotFoundError, match="neither diffusion_pytorch_model.safetensors"):
        load_dit(bad)
    wrong = dict(ref.config, ffn_dim=41)                          # weights that do not fit the config
    (bad / "config.json").write_text(json.dumps(wrong))
    (bad / "diffusion_pytorch_model.safetensors").symlink_to(d / "diffusion_pytorch_model.safetensors")
    with pytest.raises(ValueError, match="ffn.net.0.proj.weight' has shape"):
        load_dit(bad)
    model = load_dit(d)
    lat, sig, text = _inputs(T2V)
    with pytest.raises(ValueError, match=r"latents\[0\] has shape"):
        model.denoise([torch.randn(3, 1, 4, 4)] + lat[1:], sig, text)
    with pytest.raises(ValueError, match=r"text\[1\] has shape"):
        model.denoise(lat, sig, [text[0], torch.randn(4, 7)] + text[2:])
    with pytest.raises(ValueError, match="is not divisible by patch"):
        model.denoise([torch.randn(4, 1, 5, 4)] + lat[1:], sig, text)


# ---------------------------------------------------------------- sequence parallelism

def _sp_forward(model, lat, sig, text, first, w, sp, rank):
    """Loss sum(out * w) of rank `rank`'s slice of the pack (the whole pack when sp = 1): what the
    trainer feeds the model. -> (output [N*P_out], zero outside the slice; loss)."""
    from sora.parallel.sequence import padded_packing, shard_layout, shard_rows

    cu = torch.tensor([0] + [t * h * w_ // 4 for t, h, w_ in SHAPES]).cumsum(0).int()
    grid = torch.tensor([(t, h // 2, w_ // 2) for t, h, w_ in SHAPES], dtype=torch.int32)
    whole = model.kernels.layout(cu, grid)
    given = torch.tensor(first)[whole.sample_index] & (whole.positions[:, 0] == 0)
    x = torch.cat([v.reshape(-1) for v in lat])
    ctx, t = list(text), sig
    if sp > 1:
        layout = shard_layout(model.kernels.layout(*padded_packing(cu, grid, sp)), sp, rank)
        lo = layout.rows[0]
        seg = layout.whole.sample_index[lo + layout.cu_seqlens[:-1].long()]     # [S] sample of each segment
        ctx = [(text + [torch.zeros(1, text[0].shape[1])])[i] for i in seg.tolist()]   # the pad: one zero row
        t, given = torch.cat([sig, sig.new_zeros(1)])[seg], shard_rows(given, layout)
    else:
        layout = whole
    lens = torch.tensor([c.shape[0] for c in ctx])
    cu_ctx = torch.cat([lens.new_zeros(1), lens.cumsum(0)]).int()
    out = model(x, layout, t, torch.cat(ctx), cu_ctx, given)
    return out, torch.sum(out * w)


def _sp_worker(rank, d, data, port, result):
    import os

    import torch.distributed as dist

    from sora.parallel.ulysses import init_sequence_parallel_groups, wrap_for_sequence_parallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    model = load_dit(d, backend="torch")
    wrap_for_sequence_parallel(model, init_sequence_parallel_groups(2).get_sequence_parallel_group())
    out, loss = _sp_forward(model, *torch.load(data), sp=2, rank=rank)
    loss.backward()
    dist.all_reduce(out)
    grads = {k: p.grad for k, p in model.named_parameters()}
    for g in grads.values():
        dist.all_reduce(g)
    if rank == 0:
        torch.save({"out": out.detach(), "grads": grads}, result)
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.distributed
def test_sp2_matches_one_rank(t2v_dir, tmp_path):
    """Ulysses sp = 2 on gloo: output and parameter gradients of a Wan model (TI2V first frames
    included) equal one rank's on the whole pack."""
    import socket

    import torch.multiprocessing as mp

    d, _ = t2v_dir
    lat, sig, text = _inputs(T2V)
    first = [False, True, False, True]
    w = torch.randn(sum(T2V["out_channels"] * t * h * w_ for t, h, w_ in SHAPES))
    torch.save((lat, sig, text, first, w), tmp_path / "data.pt")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_sp_worker, args=(d, tmp_path / "data.pt", port, tmp_path / "sp2.pt"), nprocs=2, join=True)
    model = load_dit(d, backend="torch")
    out, loss = _sp_forward(model, lat, sig, text, first, w, sp=1, rank=0)
    loss.backward()
    got = torch.load(tmp_path / "sp2.pt")
    assert float((got["out"] - out).abs().max()) <= TOL * float(out.abs().max())
    for k, p in model.named_parameters():
        assert float((got["grads"][k] - p.grad).abs().max()) <= TOL * float(p.grad.abs().max()), k
