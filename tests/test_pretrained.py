"""Pretrained weights from local directories: small randomly initialised Wan 2.1 / CogVideoX VAEs
and T5 / umT5 / CLIP text encoders are written to disk in their libraries' formats, loaded through
our loaders, and must give exactly what the libraries' own forward passes give."""
import json

import pytest
import torch

from sora.models.pretrained import DiffusersVAE, PretrainedTextEncoder
from tests.tiny_wan import wan_vae


def _wan(path, version):
    m = wan_vae(version)
    m.save_pretrained(path)
    mean, std = torch.tensor(m.config.latents_mean), torch.tensor(m.config.latents_std)
    return m, (lambda z: (z - mean.view(-1, 1, 1, 1)) / std.view(-1, 1, 1, 1))   # Wan's pipelines normalise so


def _wan21(path):
    return _wan(path, "2.1")


def _wan22(path):
    return _wan(path, "2.2")


def _cogvideox(path):
    from diffusers import AutoencoderKLCogVideoX

    m = AutoencoderKLCogVideoX(down_block_types=("CogVideoXDownBlock3D",) * 3, up_block_types=("CogVideoXUpBlock3D",) * 3,
                               block_out_channels=(8, 16, 16), latent_channels=4, layers_per_block=1,
                               norm_num_groups=4, temporal_compression_ratio=4, scaling_factor=0.7)
    m.save_pretrained(path)
    return m, (lambda z: z * 0.7)


@pytest.mark.parametrize("make, factors, size", [(_wan21, (4, 8, 6), (16, 24)), (_wan22, (4, 16, 12), (32, 48)),
                                                 (_cogvideox, (4, 4, 4), (12, 20))])
def test_diffusers_video_vae_from_local_directory(tmp_path, make, factors, size):
    pytest.importorskip("diffusers", reason="the optional pretrained-VAE path needs diffusers")
    torch.manual_seed(0)
    ref, normalise = make(tmp_path)
    ref.eval()
    vae = DiffusersVAE(tmp_path)
    assert (vae.ft, vae.fh, vae.latent_channels) == factors
    h, w = size                                             # an odd 2 x 3 latent
    for frames in (1, 9):                                   # an image and a 9-frame clip
        x = torch.rand(1, 3, frames, h, w) * 2 - 1
        z = vae.encode(x)
        assert z.shape == (1, factors[2], 1 + (frames - 1) // 4, h // factors[1], w // factors[1])
        assert z.shape == (1, *vae.latent_shape(frames, h, w))
        with torch.no_grad():
            mode = ref.encode(x).latent_dist.mode()
            torch.testing.assert_close(z, normalise(mode))
            want = ref.decode(mode).sample                  # decode inverts the normalisation
            torch.testing.assert_close(vae.decode(z), want, rtol=1e-4, atol=1e-5)
            assert want.shape == x.shape
    with pytest.raises(ValueError, match=r"1 \+ 4\*k"):
        vae.encode(torch.zeros(1, 3, 3, h, w))
    with pytest.raises(ValueError, match=f"multiples of {factors[1]}"):
        vae.encode(torch.zeros(1, 3, 1, h + factors[1] // 2, w))


def test_wan_vae_that_does_not_compress_time_4x_is_refused(tmp_path):
    pytest.importorskip("diffusers", reason="the optional pretrained-VAE path needs diffusers")
    from diffusers import AutoencoderKLWan

    AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1, temperal_downsample=[False, True],
                     latents_mean=[0.0] * 4, latents_std=[1.0] * 4).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="4 frames per latent frame"):
        DiffusersVAE(tmp_path)


def test_pretrained_paths_never_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        DiffusersVAE("Wan-AI/Wan2.1-T2V-1.3B-Diffusers")   # a hub id, not a directory
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(ValueError, match="unsupported VAE class"):
        DiffusersVAE(tmp_path)
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        PretrainedTextEncoder("google/umt5-xxl")


def _tokenizer(path):
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<pad>", "</s>", "<unk>", "a", "red", "circle", "moving", "left", "blue"]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>",
                                         unk_token="<unk>").save_pretrained(path)
    return len(words)


def _t5(tf, n):
    return tf.T5EncoderModel(tf.T5Config(vocab_size=n, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4))


def _umt5(tf, n):
    return tf.UMT5EncoderModel(tf.UMT5Config(vocab_size=n, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4))


def _clip(tf, n):
    return tf.CLIPTextModel(tf.CLIPTextConfig(vocab_size=n, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                              num_attention_heads=4, max_position_embeddings=12, pad_token_id=0,
                                              eos_token_id=1))


@pytest.mark.parametrize("make", [_t5, _umt5, _clip])
def test_text_encoders_from_local_directory(tmp_path, make):
    tf = pytest.importorskip("transformers", reason="the optional text-encoder path needs transformers")
    n = _tokenizer(tmp_path)
    torch.manual_seed(0)
    ref = make(tf, n).eval()
    ref.save_pretrained(tmp_path)
    enc = PretrainedTextEncoder(tmp_path, max_tokens=8)
    captions = ["a red circle moving left", "blue", "a blue circle"]
    ctx, cu = enc.encode(captions)
    assert cu.tolist() == [0, 5, 6, 9] and ctx.shape == (9, 16)
    assert enc.lengths(captions) == [5, 1, 3]               # what the trainer's MFU counts
    for i, c in enumerate(captions):                        # each caption alone, no padding: the library's forward
        ids = enc.tok([c], return_tensors="pt").input_ids
        with torch.no_grad():
            want = ref(input_ids=ids).last_hidden_state[0]
        torch.testing.assert_close(ctx[cu[i]:cu[i + 1]], want, rtol=1e-5, atol=1e-5)


def test_preprocess_with_wan22_vae_writes_its_latents(tmp_path):
    """`sora preprocess` with vae.pretrained = a Wan 2.2-like VAE: each clip's latent is 4 x 16 x 16
    smaller, 12 channels here (48 in Wan 2.2), and equals the VAE's normalised encoding."""
    pytest.importorskip("diffusers", reason="the optional pretrained-VAE path needs diffusers")
    import io
    import os
    import tarfile

    import numpy as np

    from sora.cli import main
    from sora.config import load_config
    from sora.data.pipeline import VideoStream
    from sora.data.shards import list_shards
    from sora.data.synth import synthesize
    from sora.shapes import ShapeRules

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    synthesize(tmp_path / "raw", clips=3, heldout_clips=0, seed=2, shard_size=3)
    _wan22(tmp_path / "vae")
    args = [f"{root}/configs/demo.yaml", f"data.path={tmp_path / 'raw'}", f"vae.pretrained={tmp_path / 'vae'}",
            "vae.ft=4", "vae.fh=16", "vae.latent_channels=12", "data.max_frames=5", "data.fps=0",
            "data.max_tokens_per_sample=64", "sample.sizes=[[5,64,64]]"]
    assert main(["preprocess", *args, "--out", str(tmp_path / "lat"), "--splits", "train"]) == 0
    cfg = load_config(args[0], args[1:])
    vae = DiffusersVAE(tmp_path / "vae")
    clips = {s.key: s.data for s in VideoStream(list_shards(tmp_path / "raw", "train"), cfg.data, ShapeRules.of(cfg))
             .samples()}
    with tarfile.open(tmp_path / "lat" / "train-000000.tar") as t:
        latents = {m.name[:-len(".latent.npy")]: np.load(io.BytesIO(t.extractfile(m).read()), allow_pickle=False)
                   for m in t.getmembers() if m.name.endswith(".latent.npy")}
    assert sorted(latents) == sorted(clips) and len(clips) == 3
    for key, z in latents.items():
        frames, h, w = clips[key].shape[1:]
        assert z.shape == (12, 1 + (frames - 1) // 4, h // 16, w // 16), (key, z.shape, clips[key].shape)
        want = vae.encode(clips[key][None])[0].numpy()
        np.testing.assert_allclose(z.astype(np.float32), want, rtol=2e-3, atol=2e-3)   # stored as float16
