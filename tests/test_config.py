"""Config schema: unknown keys and wrong types name the key; overrides; bare names; round trip."""

import pytest
import yaml

from pipeline.config import load_config, resolve_config_path, save_config
from pipeline.errors import ConfigError


def test_bare_name_resolves_in_configs():
    assert resolve_config_path("chest_xray").name == "chest_xray.yaml"
    assert resolve_config_path("chest_xray.yaml").name == "chest_xray.yaml"


@pytest.mark.parametrize("name", ["chest_xray", "ultrasound", "smoke"])
def test_builtin_configs_validate(name):
    cfg = load_config(name)
    assert cfg.model.backbone == "tf_efficientnet_lite0"
    assert cfg.model.pretrained == "bundled"
    assert [s.train for s in cfg.train.stages][0] == "head"


def test_unknown_key_names_the_key():
    with pytest.raises(ConfigError, match=r"train\.lerning_rate: unknown key"):
        load_config("chest_xray", ["train.lerning_rate=0.1"])


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match=r"train\.batch_size"):
        load_config("chest_xray", ["train.batch_size=many"])


def test_overrides_parse_yaml_scalars_and_list_items():
    cfg = load_config("chest_xray", ["train.batch_size=8", "train.stages.1.lr=1e-5", "data.frames=3",
                                     "report.threshold=0.3"])
    assert cfg.train.batch_size == 8
    assert cfg.train.stages[1].lr == pytest.approx(1e-5)
    assert cfg.data.frames == 3
    assert cfg.report.threshold == pytest.approx(0.3)


def test_bad_stage_train_value():
    with pytest.raises(ConfigError, match=r"train\.stages\.0\.train"):
        load_config("chest_xray", ["train.stages.0.train=backbone"])


def test_positive_class_must_be_a_class():
    with pytest.raises(ConfigError, match="positive_class"):
        load_config("chest_xray", ["task.positive_class=covid"])


def test_missing_config_file_lists_builtins():
    with pytest.raises(ConfigError, match="chest_xray"):
        load_config("no_such_config")


def test_round_trip(tmp_path):
    cfg = load_config("ultrasound", ["train.seed=7"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(str(tmp_path / "config.yaml"))
    assert again == cfg
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["train"]["seed"] == 7


def test_in_chans_other_than_one_is_refused_for_training():
    with pytest.raises(ConfigError, match="in_chans"):
        load_config("chest_xray", ["model.in_chans=2"])
