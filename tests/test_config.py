import pytest

from sora.config import ConfigError, load_config, save_config, to_dict


def test_demo_configs_load(tmp_path):
    for name in ("configs/demo.yaml", "configs/demo-vae.yaml"):
        cfg = load_config(name, ["run.dir=" + str(tmp_path / "r")])
        assert cfg.run.dir == str(tmp_path / "r")
        save_config(cfg, tmp_path / "c.yaml")
        assert to_dict(load_config(str(tmp_path / "c.yaml"))) == to_dict(cfg)


@pytest.mark.parametrize("name", ["configs/dit-xl-256p.yaml", "configs/dit-1b-480p.yaml", "configs/dit-3b-720p.yaml"])
def test_real_size_configs_load(name):
    load_config(name)


@pytest.mark.parametrize("name, wan", [("wan2.1-t2v-1.3b-480p", dict(fh=8, ch=16, shift=3.0, frames=81, ffp=0.0)),
                                       ("wan2.2-ti2v-5b-480p", dict(fh=16, ch=48, shift=3.0, frames=121, ffp=0.5)),
                                       ("wan2.2-ti2v-5b-720p", dict(fh=16, ch=48, shift=5.0, frames=121, ffp=0.5))])
def test_wan_configs_load(name, wan, tmp_path):
    """`sora train CONFIG model.pretrained=DIR`: the config reads (the transformer's config.json is
    checked: patch, heads for sp), with Wan's VAE factors, umT5 context and sampling defaults."""
    import json

    from sora.models.wan_pipeline import WAN_SAMPLE

    path = f"configs/{name}.yaml"
    with pytest.raises(ConfigError, match="model.pretrained.*not a local"):
        load_config(path)                                    # weights/... is not here: refused by name
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "WanTransformer3DModel", "patch_size": [1, 2, 2],
                                                      "num_attention_heads": 12, "attention_head_dim": 128,
                                                      "in_channels": wan["ch"], "out_channels": wan["ch"],
                                                      "text_dim": 4096, "ffn_dim": 8960, "num_layers": 30}))
    cfg = load_config(path, [f"model.pretrained={tmp_path}"])
    assert (cfg.vae.ft, cfg.vae.fh, cfg.vae.latent_channels) == (4, wan["fh"], wan["ch"])
    assert (cfg.text.encoder, cfg.text.max_tokens, cfg.text.context_rows, cfg.text.source) == ("t5", 512, 512, "cached")
    assert (cfg.train.precision, cfg.train.zero_stage, cfg.data.max_frames) == ("bf16", 3, wan["frames"])
    assert cfg.diffusion.shift_base == cfg.diffusion.shift_max == cfg.sample.shift == wan["shift"]
    assert cfg.diffusion.first_frame_prob == wan["ffp"]
    assert {k: getattr(cfg.sample, k) for k in WAN_SAMPLE} == WAN_SAMPLE
    with pytest.raises(ConfigError, match="model.patch"):
        load_config(path, [f"model.pretrained={tmp_path}", "model.patch=[1,1,1]"])
    with pytest.raises(ConfigError, match="parallel.sp"):
        load_config(path, [f"model.pretrained={tmp_path}", "parallel.sp=5"])     # 12 heads


def test_overrides_typed():
    cfg = load_config("configs/demo.yaml", ["train.steps=7", "model.qk_norm=false", "model.patch=[1,2,2]", "optim.lr=3e-4"])
    assert cfg.train.steps == 7 and cfg.model.qk_norm is False and cfg.model.patch == (1, 2, 2)
    assert cfg.optim.lr == pytest.approx(3e-4)


@pytest.mark.parametrize("override,key", [
    ("train.stepz=3", "train.stepz"),
    ("nosection.x=1", "nosection"),
    ("data.max_frames=8", "data.max_frames"),            # not 1 + ft*k
    ("model.heads=5", "model.heads"),                     # does not divide the width
    ("sample.sizes=[[9,44,48]]", "sample.sizes[0]"),     # not divisible by fh * patch
    ("sample.sizes=[[8,48,48]]", "sample.sizes[0]"),     # frames not 1 + ft*k
    ("train.steps=abc", "train.steps"),
    ("model.size=DiT-Q", "model.size"),
    ("parallel.sp=4", "parallel.sp"),                     # 6 heads not divisible by 4
    ("data.tokens_per_batch=10", "data.tokens_per_batch"),
    ("diffusion.first_frame_prob=1.5", "diffusion.first_frame_prob"),
    ("sample.first_frame=joint", "sample.first_frame"),   # the demo never denoises a whole clip
    ("sample.first_frame=both", "sample.first_frame"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        load_config("configs/demo.yaml", [override])


def test_generate_mode_needs_first_frame_training():
    with pytest.raises(ConfigError, match="sample.first_frame"):
        load_config("configs/demo.yaml", ["diffusion.first_frame_prob=0"])
    load_config("configs/demo.yaml", ["diffusion.first_frame_prob=0", "sample.first_frame=joint"])


def test_missing_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("configs/nope.yaml")


@pytest.mark.parametrize("text, where", [
    ("run: [\n", "line 2, column 1: expected the node content"),           # an unclosed list
    ("run:\n  dir: x\n data: 3\n", "line 3, column 2: expected <block end>"),   # bad indentation
    ("run: {dir: x\n", "line 2, column 1: expected ',' or '}'"),
    ("a: 'x\n", "line 2, column 1: found unexpected end of stream"),       # a scanner error
])
def test_invalid_yaml_names_file_line_and_column(tmp_path, text, where):
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(ConfigError, match=f"config file '.*bad.yaml' is not valid YAML at {where}"):
        load_config(str(tmp_path / "bad.yaml"))


def test_invalid_yaml_in_an_override_names_it():
    with pytest.raises(ConfigError, match=r"override 'model.patch=\[1,2' is not valid YAML at line 1, column 5"):
        load_config("configs/demo.yaml", ["model.patch=[1,2"])


def test_retired_key_in_an_old_run_config_is_ignored_with_a_warning(tmp_path):
    (tmp_path / "old.yaml").write_text("data:\n  num_workers: 4\n  max_frames: 9\n")
    with pytest.warns(UserWarning, match="data.num_workers' is retired"):
        cfg = load_config(str(tmp_path / "old.yaml"))
    assert cfg.data.max_frames == 9
