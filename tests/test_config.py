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
