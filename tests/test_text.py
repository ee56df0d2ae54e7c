"""Text encoders: the hash encoder (demo default) and a T5 encoder loaded from a local directory."""
import pytest
import torch

from sora.models.text import HashTextEncoder, HashTokenizer, FrozenTextEncoder
from sora.ops.attention import varlen_attention_torch


def test_hash_tokenizer_is_stable_and_never_empty():
    tok = HashTokenizer(vocab=97, max_tokens=5)
    ids, cu = tok(["A red  circle!", "", "one two three four five six seven"])
    assert cu.tolist() == [0, 4, 5, 10]                       # BOS + words, capped at max_tokens
    assert ids[0] == HashTokenizer.BOS and ids[4] == HashTokenizer.BOS
    again, _ = HashTokenizer(vocab=97, max_tokens=5)(["a red circle"])
    assert torch.equal(again, ids[:4])                        # same ids in any process (crc32)
    assert ((ids >= 0) & (ids < 97)).all()


def test_hash_encoder_packs_per_caption():
    enc = HashTextEncoder(dim=16, layers=1, heads=2, vocab=64, max_tokens=8)
    ids, cu = enc.tokenizer(["a red circle", "a blue square moving up"])
    out = enc(ids, cu, varlen_attention_torch)
    alone = enc(*enc.tokenizer(["a red circle"]), varlen_attention_torch)
    assert out.shape == (int(cu[-1]), 16)
    torch.testing.assert_close(out[: int(cu[1])], alone)     # captions do not see each other


def test_t5_from_local_directory(tmp_path):
    transformers = pytest.importorskip("transformers", reason="the optional T5 path needs transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<pad>", "</s>", "<unk>", "a", "red", "circle", "moving", "left", "blue"]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(tmp_path)
    cfg = transformers.T5Config(vocab_size=len(words), d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4)
    torch.manual_seed(0)
    transformers.T5EncoderModel(cfg).save_pretrained(tmp_path)
    enc = FrozenTextEncoder(str(tmp_path), max_tokens=8)
    ctx, cu = enc.encode(["a red circle moving left", "blue"])
    assert cu.tolist() == [0, 5, 6] and ctx.shape == (6, 16)
    alone, _ = enc.encode(["blue"])
    torch.testing.assert_close(ctx[5:], alone, rtol=1e-5, atol=1e-6)  # padding does not leak into packing


def test_hash_encoder_calls_attention_as_flash_attn_requires():
    """The positional max_seqlen_q/k and everything else flash-attn checks (its stand-in,
    tests/standins/flash_attn), in bf16 as on a GPU; same result as the reference."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).parent / "standins" / "flash_attn" / "__init__.py"
    spec = importlib.util.spec_from_file_location("flash_attn_standin", path)
    standin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(standin)
    enc = HashTextEncoder(dim=16, layers=2, heads=2, vocab=64, max_tokens=8).to(torch.bfloat16)
    ids, cu = enc.tokenizer(["a red circle", "", "a blue square moving up"])
    out = enc(ids, cu, standin.flash_attn_varlen_func)
    ref = enc(ids, cu, varlen_attention_torch)
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)
    with pytest.raises(RuntimeError, match="fp16 and bf16"):
        enc.float()(ids, cu, standin.flash_attn_varlen_func)
