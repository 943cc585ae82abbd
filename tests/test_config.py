"""TrainConfig: defaults, bounds, coercion, and that MLproject and the CLI derive from it."""

from __future__ import annotations

import click
import pytest
import yaml
from conftest import REPO

from umx_tune.cli import cli
from umx_tune.cli.options import option_name
from umx_tune.config import MODEL_SHAPING, TrainConfig, param_fields
from umx_tune.errors import ConfigError


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"hidden_size": 0}, "hidden_size=0 is out of range; must be >= 1"),
        ({"batch_size": -3}, "batch_size=-3 is out of range; must be >= 1"),
        ({"target": "piano"}, "target='piano' is not allowed; choose one of vocals, drums, bass, other"),
        ({"nfft": 3000}, "nfft=3000 must be a power of two"),
        ({"nhop": 4096}, "nhop=4096 must be < nfft=4096"),
        ({"bandwidth": 30000}, "bandwidth=30000 Hz is above Nyquist; must be <= 22050 Hz"),
        ({"seq_dur": 25.0}, "seq_dur=25 s is longer than the synthetic tracks"),
        ({"lr": 0}, "lr=0.0 is out of range; must be > 0"),
        ({"lr_decay_gamma": 1.5}, "lr_decay_gamma=1.5 is out of range; must be <= 1"),
        ({"epochs": 2.5}, "epochs=2.5 is not a valid int"),
        ({"unidirectional": "maybe"}, "unidirectional='maybe' is not a valid bool"),
        ({"device": "tpu"}, "device='tpu' is not allowed"),
        ({"learning_rate": 0.1}, "unknown parameter 'learning_rate'"),
    ],
)
def test_bad_values_name_the_value_and_what_is_allowed(values: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict(values)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_where_prefix_names_the_source() -> None:
    with pytest.raises(ConfigError, match=r"^grid.yaml: open-unmix: hidden_size=-1 is out of range"):
        TrainConfig.from_dict({"hidden_size": -1}, where="grid.yaml: open-unmix")


def test_strings_are_coerced_as_a_cli_or_yaml_would_give_them() -> None:
    config = TrainConfig.from_dict({"hidden_size": "256", "lr": "1e-4", "unidirectional": "true", "root": ""})
    assert (config.hidden_size, config.lr, config.unidirectional) == (256, 1e-4, True)


def test_signature_ignores_worker_count_but_not_hyperparameters() -> None:
    base = TrainConfig()
    assert base.replace(nb_workers=4).signature() == base.signature()
    assert base.replace(hidden_size=256).signature() != base.signature()


def test_model_shape_differences() -> None:
    base = TrainConfig()
    assert base.model_shape_differences(base.replace(epochs=9, lr=0.01)) == {}
    assert base.model_shape_differences(base.replace(hidden_size=256)) == {"hidden_size": (512, 256)}
    assert set(MODEL_SHAPING) <= {f.name for f in param_fields()}


def test_mlproject_main_entry_point_matches_train_config() -> None:
    project = yaml.safe_load((REPO / "MLproject").read_text())
    main = project["entry_points"]["main"]
    defaults = TrainConfig()
    assert list(main["parameters"]) == [f.name for f in param_fields()]
    for name, spec in main["parameters"].items():
        assert TrainConfig.from_dict({name: spec["default"]}) == defaults, name
        assert f"{option_name(name)} {{{name}}}" in main["command"]


def test_train_command_has_an_option_per_parameter() -> None:
    train = cli.get_command(click.Context(cli), "train")  # the group imports its commands lazily
    assert train is not None
    options = {opt for p in train.params for opt in p.opts}
    assert {option_name(f.name) for f in param_fields()} <= options
