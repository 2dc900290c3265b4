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
    with pytest.raises(ConfigError, match=r"--set train\.lerning_rate=0\.1: unknown key \(valid keys in train: "
                                          r"batch_size, .*stages, threads\)"):
        load_config("chest_xray", ["train.lerning_rate=0.1"])


def _message(name, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(name, list(overrides))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unknown_key_suggests_the_closest_key():
    assert _message("chest_xray", ["train.batchsize=4"]) == (
        "--set train.batchsize=4: unknown key (did you mean train.batch_size?)")
    # inside list items: the schema of the item (StageConfig) gives the candidates
    assert _message("chest_xray", ["train.stages.0.lrr=1e-4"]) == (
        "--set train.stages.0.lrr=1e-4: unknown key (did you mean train.stages.0.lr?)")
    # an unknown section the override created
    assert _message("chest_xray", ["modle.stem=sum"]).startswith(
        "--set modle.stem=sum: modle: unknown key (did you mean model?)")


def _write(tmp_path, text: str):
    path = tmp_path / "x.yaml"
    path.write_text(text)
    return path


BAD_YAML = """
task: {classes: [a, b]}
data: {manifest: m.csv}
train: {batchsize: 4, seed: 1}
model: {stem: magic}
"""


def test_every_error_of_a_file_is_listed_on_one_line(tmp_path):
    path = _write(tmp_path, BAD_YAML)
    assert _message(str(path)) == (
        f"{path}: model.stem: Input should be 'auto', 'sum', 'fold', 'repeat', 'mean' or 'random' (got 'magic'); "
        "train.batchsize: unknown key (did you mean train.batch_size?)")


def test_many_errors_are_capped(tmp_path):
    keys = [f"key{i}" for i in range(13)]
    path = _write(tmp_path, "task: {classes: [a, b]}\ndata: {manifest: m.csv}\naugment:\n"
                  + "".join(f"  {k}: 1\n" for k in keys))
    message = _message(str(path))
    assert message.count("unknown key") == 10
    assert message.endswith("; augment.key9: unknown key (valid keys in augment: enabled, flip, gamma, noise_std, "
                            "rotate_deg, scale, translate) (and 3 more)")


def test_errors_from_overrides_name_the_override_not_the_file(tmp_path):
    path = _write(tmp_path, BAD_YAML)
    message = _message(str(path), ["augment.flipp=0.5", "train.batch_size=0"])
    assert message == (
        "--set augment.flipp=0.5: unknown key (did you mean augment.flip?); "
        "--set train.batch_size=0: Input should be greater than or equal to 1 (got 0); "
        f"{path}: model.stem: Input should be 'auto', 'sum', 'fold', 'repeat', 'mean' or 'random' (got 'magic'); "
        "train.batchsize: unknown key (did you mean train.batch_size?)")
    # an override fixes the file's error: what is left comes from the file alone
    assert _message(str(path), ["model.stem=sum"]) == (
        f"{path}: train.batchsize: unknown key (did you mean train.batch_size?)")
    # a section validator's message about the overridden key, and an error below an overridden list
    assert _message("chest_xray", ["task.positive_class=covid"]) == (
        "--set task.positive_class=covid: 'covid' is not one of ['normal', 'pneumonia']")
    assert _message("chest_xray", ["train.stages=[{name: x, lr: 0.1}]"]) == (
        "--set train.stages=[{name: x, lr: 0.1}]: train.stages.0.epochs: required key is missing")


def test_union_values_give_one_error():
    assert _message("chest_xray", ["data.frames=foo"]) == (
        "--set data.frames=foo: Input should be 'middle', 'first', 'all' or 'nonzero' / Input should be a valid "
        "integer, unable to parse string as an integer (got 'foo')")


def test_list_index_errors_say_what_is_wrong():
    assert _message("chest_xray", ["train.stages.7.lr=1e-4"]) == (
        "--set train.stages.7.lr=1e-4: index 7 is out of range (train.stages has 2 items)")
    assert _message("chest_xray", ["train.stages.first.lr=1e-4"]) == (
        "--set train.stages.first.lr=1e-4: 'first' is not a list index (train.stages is a list of 2 items; "
        "use train.stages.0 .. train.stages.1)")
    assert _message("chest_xray", ["train.batch_size.x=1"]) == (
        "--set train.batch_size.x=1: train.batch_size is a value (32), not a section or list; "
        "set it with --set train.batch_size=VALUE")
    # all override errors are listed, with the validation errors of the rest
    assert _message("chest_xray", ["train.stages.9.lr=1", "oops", "train.batchsize=2"]) == (
        "--set train.stages.9.lr=1: index 9 is out of range (train.stages has 2 items); "
        "--set oops: expected KEY=VALUE, e.g. train.batch_size=16; "
        "--set train.batchsize=2: unknown key (did you mean train.batch_size?)")


def test_list_items_of_a_default_list_can_be_set(tmp_path):
    path = _write(tmp_path, "task: {classes: [a, b]}\ndata: {manifest: m.csv}\n")
    cfg = load_config(str(path), ["train.stages.1.lr=1e-5"])
    assert cfg.train.stages[1].lr == pytest.approx(1e-5) and cfg.train.stages[0].name == "head"


def test_unknown_backbone_suggests_timm_names():
    from pipeline.model.weights import create_backbone

    with pytest.raises(ConfigError) as info:
        create_backbone("resnet81", "none", 2)
    message = str(info.value)
    assert message.startswith("model.backbone: unknown timm model 'resnet81' (did you mean resnet18, ")
    assert message.endswith("?)") and "resnet152" in message
    with pytest.raises(ConfigError, match=r"^model\.backbone: unknown timm model 'convnext-tiny' \(did you mean "
                                          r"convnext_tiny, "):
        create_backbone("convnext-tiny", "none", 2)
    with pytest.raises(ConfigError, match=r"^model\.backbone: timm's tf_efficientnet_lite0 has no weights tagged "
                                          r"'x' \(known: tf_efficientnet_lite0\.in1k\)"):
        create_backbone("tf_efficientnet_lite0.x", "none", 2)


def test_stage_that_trains_nothing_is_refused():
    import timm

    from pipeline.model.models import set_trainable

    model = timm.create_model("test_efficientnet", num_classes=0)  # no classifier parameters
    with pytest.raises(ConfigError, match=r"^train\.stages: a stage with train: head leaves no parameter of this "
                                          r"EfficientNet trainable \(its classifier has none\); use train: all or "
                                          r"last:N$"):
        set_trainable(model, "head")
    assert set_trainable(model, "last:1") and any(p.requires_grad for p in model.parameters())


def test_cli_prints_one_line_and_exits_2(capsys):
    from pipeline.cli import main

    assert main(["--config", "smoke", "--set", "train.batchsize=4"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --set train.batchsize=4: unknown key (did you mean train.batch_size?)\n"


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
