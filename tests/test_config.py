"""Config loading: base inheritance, overrides, and errors that name the key and the file."""
from pathlib import Path

import pytest

from dontstop.config import ConfigError, dump_config, load_config

BASE = """
competition:
  name: demo
  train: input/demo/train.csv
  target_columns: [score]
  task: regression
  metric: rmse
train:
  lr: 1.0e-4
  epochs: 3
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def test_base_inheritance_and_overrides(tmp_path):
    write(tmp_path, "base", BASE)
    child = write(tmp_path, "child", "base: base.yaml\ntrain:\n  epochs: 5\nmodel:\n  pooling: cls\n")
    cfg = load_config(child, ["train.lr=3e-5", "model.max_length=64", "competition.text_columns=[title, text]"])
    assert cfg.experiment == "child"
    assert cfg.train.epochs == 5.0  # from the child
    assert cfg.train.lr == pytest.approx(3e-5)  # the command line beats both files
    assert cfg.competition.task == "regression"  # from the base
    assert cfg.model.pooling == "cls" and cfg.model.max_length == 64
    assert cfg.competition.text_columns == ["title", "text"]
    assert cfg.oof_path == Path("oof/child") and cfg.models_path == Path("models/child")
    assert cfg.fold_file == Path("input/folds/demo_k5_s42.csv")


def test_resolved_config_round_trips(tmp_path):
    import yaml

    from dontstop.config import config_from_dict

    cfg = load_config(write(tmp_path, "exp", BASE), ["train.seed=7"])
    again = config_from_dict(yaml.safe_load(dump_config(cfg)), "exp")
    assert again == cfg


def test_yaml_float_strings_and_scalar_lists_are_accepted(tmp_path):
    cfg = load_config(write(tmp_path, "exp", BASE.replace("lr: 1.0e-4", "lr: 2e-5").replace("[score]", "score")))
    assert cfg.train.lr == pytest.approx(2e-5)  # YAML 1.1 reads 2e-5 as a string
    assert cfg.competition.target_columns == ["score"]


@pytest.mark.parametrize("text, overrides, expected", [
    (BASE + "  lr_typo: 1\n", [], "unknown key 'train.lr_typo'"),
    (BASE + "optimiser: adamw\n", [], "unknown key 'optimiser'"),
    (BASE, ["train.epochs=many"], "key 'train.epochs' must be float"),
    (BASE, ["train.batch_size=1.5"], "key 'train.batch_size' must be int"),
    (BASE, ["model.gradient_checkpointing=maybe"], "key 'model.gradient_checkpointing' must be bool"),
    (BASE.replace("  metric: rmse\n", ""), [], "required key 'competition.metric' is missing"),
    (BASE, ["competition.metric=auc"], "key 'competition.metric'"),
    (BASE, ["model.pooling=max"], "key 'model.pooling' must be one of"),
    (BASE, ["train.eval_every=0"], "train.eval_every"),
    (BASE, ["folds.n_folds=1"], "folds.n_folds"),
    (BASE, ["competition.task=binary", "competition.metric=auc", "competition.target_columns=[a, b]"],
     "takes one target column"),
    (BASE, ["lr"], "not of the form key=value"),
    (BASE, ["stages=[folds, magic]"], "unknown stage 'magic'"),
])
def test_errors_name_key_and_file(tmp_path, text, overrides, expected):
    path = write(tmp_path, "exp", text)
    with pytest.raises(ConfigError) as err:
        load_config(path, overrides)
    message = str(err.value)
    assert expected in message
    if not overrides:  # errors from the file name the file
        assert str(path) in message


def test_error_in_base_names_the_base_file(tmp_path):
    base = write(tmp_path, "base", BASE + "  warmup: 0.1\n")
    child = write(tmp_path, "child", "base: base\n")
    with pytest.raises(ConfigError, match="unknown key 'train.warmup'") as err:
        load_config(child)
    assert str(base) in str(err.value)


def test_missing_base_cycle_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="base 'nope.yaml' not found"):
        load_config(write(tmp_path, "a", "base: nope.yaml\n"))
    write(tmp_path, "x", "base: y.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(write(tmp_path, "y", "base: x.yaml\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.yaml")


def test_shipped_configs_load():
    root = Path(__file__).resolve().parents[1]
    for path in sorted((root / "configs").glob("*.yaml")):
        cfg = load_config(path)
        assert cfg.experiment == path.stem
