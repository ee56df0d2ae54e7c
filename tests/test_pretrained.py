"""Pretrained weights from local directories: small randomly initialised Wan 2.1 / CogVideoX VAEs
and T5 / umT5 / CLIP text encoders are written to disk in their libraries' formats, loaded through
our loaders, and must give exactly what the libraries' own forward passes give."""
import json

import pytest
import torch

from sora.models.pretrained import DiffusersVAE, PretrainedTextEncoder


def _wan(path):
    from diffusers import AutoencoderKLWan

    m = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1, temperal_downsample=[True, True],
                         latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.5, 2.0, 1.0])
    m.save_pretrained(path)
    mean, std = torch.tensor(m.config.latents_mean), torch.tensor(m.config.latents_std)
    return m, (lambda z: (z - mean.view(-1, 1, 1, 1)) / std.view(-1, 1, 1, 1))


def _cogvideox(path):
    from diffusers import AutoencoderKLCogVideoX

    m = AutoencoderKLCogVideoX(down_block_types=("CogVideoXDownBlock3D",) * 3, up_block_types=("CogVideoXUpBlock3D",) * 3,
                               block_out_channels=(8, 16, 16), latent_channels=4, layers_per_block=1,
                               norm_num_groups=4, temporal_compression_ratio=4, scaling_factor=0.7)
    m.save_pretrained(path)
    return m, (lambda z: z * 0.7)


@pytest.mark.parametrize("make", [_wan, _cogvideox])
def test_diffusers_video_vae_from_local_directory(tmp_path, make):
    pytest.importorskip("diffusers", reason="the optional pretrained-VAE path needs diffusers")
    torch.manual_seed(0)
    ref, normalise = make(tmp_path)
    ref.eval()
    vae = DiffusersVAE(tmp_path)
    assert (vae.ft, vae.fh, vae.latent_channels) == (4, 4, 4)
    for frames in (1, 9):                                   # an image and a 9-frame clip, odd 3x5 latent
        x = torch.rand(1, 3, frames, 12, 20) * 2 - 1
        z = vae.encode(x)
        assert z.shape == (1, *vae.latent_shape(frames, 12, 20))
        with torch.no_grad():
            want = normalise(ref.encode(x).latent_dist.mode())
            torch.testing.assert_close(z, want)
            torch.testing.assert_close(vae.decode(z), ref.decode(ref.encode(x).latent_dist.mode()).sample,
                                       rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        vae.encode(torch.zeros(1, 3, 3, 12, 20))


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
