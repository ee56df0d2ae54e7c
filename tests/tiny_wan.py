"""Tiny random Wan parts written to local directories in their libraries' formats (nothing is
downloaded): a umT5 encoder + word-level tokenizer, Wan 2.1 / 2.2 VAEs, a Wan transformer, and a
whole diffusers Wan pipeline directory (model_index.json, transformer/, vae/, text_encoder/,
tokenizer/, scheduler/) as Wan-AI's *-Diffusers releases lay it out."""
import torch

WORDS = ["<pad>", "</s>", "<unk>", "a", "an", "red", "green", "blue", "yellow", "white", "magenta", "circle",
         "square", "triangle", "moving", "left", "right", "up", "down"]
TEXT_DIM = 20


def umt5(path=None):
    """(tokenizer, encoder): a tiny random umT5 and a word-level tokenizer that appends </s> like T5's."""
    import transformers as tf
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok = tf.PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    model = tf.UMT5EncoderModel(tf.UMT5Config(vocab_size=len(WORDS), d_model=TEXT_DIM, d_kv=5, d_ff=24,
                                              num_layers=2, num_heads=4)).eval()
    if path is not None:
        tok.save_pretrained(path)
        model.save_pretrained(path)
    return tok, model


def wan_vae(version: str, seed: int = 1):
    """A narrow AutoencoderKLWan with random latents_mean / latents_std. "2.1": 4 x 8 x 8, 6 channels
    (16 in Wan 2.1); "2.2": pixels patchified 2 x 2 (12 channels in and out), residual blocks, 4 x 16
    x 16, 12 channels (48 in Wan 2.2)."""
    from diffusers import AutoencoderKLWan

    arch = {"2.1": dict(z_dim=6),
            "2.2": dict(z_dim=12, decoder_base_dim=12, is_residual=True, in_channels=12, out_channels=12,
                        patch_size=2, scale_factor_spatial=16)}[version]
    g = torch.Generator().manual_seed(seed)
    z = arch["z_dim"]
    torch.manual_seed(seed)
    return AutoencoderKLWan(base_dim=8, num_res_blocks=1, dim_mult=[1, 2, 4, 4], temperal_downsample=[False, True, True],
                            latents_mean=(torch.rand(z, generator=g) - 0.5).tolist(),
                            latents_std=(torch.rand(z, generator=g) + 0.5).tolist(), **arch).eval()


def wan_transformer(channels: int, seed: int = 2):
    """A tiny WanTransformer3DModel (head dim 12: RoPE sections (4, 4, 4)) with every parameter
    perturbed, so that no zero-initialised weight hides a mapping error."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    m = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=channels,
                              out_channels=channels, text_dim=TEXT_DIM, freq_dim=16, ffn_dim=32, num_layers=2,
                              rope_max_seq_len=32).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m


def wan_pipeline(path, version: str, flow_shift: float = 3.0):
    """A diffusers Wan pipeline directory: "2.1" a T2V pipeline (WanPipeline), "2.2" a TI2V one
    (WanImageToVideoPipeline with expand_timesteps: the clean first frame's timestep is 0) -> the
    pipeline object (UniPC scheduler, as Wan ships)."""
    from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline, WanPipeline

    tok, enc = umt5()
    vae = wan_vae(version)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=flow_shift,
                                        num_train_timesteps=1000)
    parts = dict(tokenizer=tok, text_encoder=enc, vae=vae, transformer=wan_transformer(vae.config.z_dim),
                 scheduler=scheduler)
    if version == "2.1":
        pipe = WanPipeline(**parts)
    else:
        pipe = WanImageToVideoPipeline(**parts, image_processor=None, image_encoder=None, expand_timesteps=True)
    pipe.save_pretrained(path)
    return pipe
