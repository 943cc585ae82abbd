"""The training loop: determinism, checkpoints and resume, divergence."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from umx_tune import tracking
from umx_tune.config import TrainConfig
from umx_tune.data.dataset import open_dataset
from umx_tune.errors import ModelError
from umx_tune.separation.model import build_unmix
from umx_tune.training.checkpoint import CHECKPOINT_FILE, checkpoint_file, read_checkpoint, resume_config
from umx_tune.training.trainer import EpochResult, Trainer, TrainingDiverged


def _fit(config: TrainConfig, folder: Path, resume: bool = False) -> list[EpochResult]:
    seen: list[EpochResult] = []
    trainer = Trainer(config, open_dataset(config), torch.device("cpu"), folder, progress=False)
    trainer.fit(seen.append, resume=resume)
    return seen


def _curve(results: list[EpochResult]) -> list[tuple[float, float]]:
    return [(r.train_loss, r.valid_loss) for r in results]


def test_same_seed_same_curve_for_any_worker_count(tiny_config: TrainConfig, tmp_path: Path) -> None:
    config = tiny_config.replace(epochs=3)
    first = _curve(_fit(config, tmp_path / "a"))
    assert first == _curve(_fit(config, tmp_path / "b"))
    assert first == _curve(_fit(config.replace(nb_workers=2), tmp_path / "c"))
    assert first != _curve(_fit(config.replace(seed=43), tmp_path / "d"))


def test_checkpoint_is_self_describing(tiny_config: TrainConfig, tmp_path: Path) -> None:
    results = _fit(tiny_config, tmp_path)
    checkpoint = read_checkpoint(tmp_path / CHECKPOINT_FILE)  # torch.load(weights_only=True)
    assert checkpoint.config == tiny_config
    assert checkpoint.state.epoch == 2 and checkpoint.state.valid_losses == [r.valid_loss for r in results]
    # the config alone rebuilds the network the weights belong to
    build_unmix(checkpoint.config).load_state_dict(checkpoint.best_model)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no checkpoint at"),
        (b"not a torch file", "cannot load checkpoint"),
        ({"weights": {}}, "is not a umx-tune checkpoint: it holds no "),
    ],
)
def test_what_is_not_a_checkpoint_is_a_one_line_model_error(
    tmp_path: Path, content: bytes | dict | None, message: str
) -> None:
    path = tmp_path / CHECKPOINT_FILE
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(ModelError, match=message) as info:
        read_checkpoint(path)
    assert "\n" not in str(info.value)


def test_a_runs_checkpoint_is_found_in_its_artifacts(
    tiny_config: TrainConfig, tracking_uri: str, tmp_path: Path
) -> None:
    config = tiny_config.replace(epochs=1)
    _fit(config, tmp_path / "trained")
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment(f"checkpoints-{tmp_path.name}")
    run_id = client.create_run(experiment).info.run_id
    client.log_artifact(run_id, str(tmp_path / "trained" / CHECKPOINT_FILE), tracking.CHECKPOINT_ARTIFACT_DIR)
    elsewhere = tmp_path / "elsewhere"  # another machine's --checkpoint-dir: nothing local
    assert checkpoint_file(run_id, elsewhere) == elsewhere / run_id / CHECKPOINT_FILE
    assert resume_config(run_id, elsewhere, {"epochs": 3}) == config.replace(epochs=3)
    with pytest.raises(ModelError, match=r"different model shape: hidden_size=32 \(checkpoint has 16\)"):
        resume_config(run_id, elsewhere, {"hidden_size": 32})
    empty_run = client.create_run(experiment).info.run_id
    with pytest.raises(ModelError, match=f"no checkpoint to resume run {empty_run} in ") as info:
        checkpoint_file(empty_run, elsewhere)
    assert "\n" not in str(info.value)
    assert not (elsewhere / empty_run).exists()  # no download and no empty folder left behind


def test_resume_continues_the_same_curve(tiny_config: TrainConfig, tmp_path: Path) -> None:
    config = tiny_config.replace(epochs=3)
    straight = _curve(_fit(config, tmp_path / "straight"))
    first = _curve(_fit(config.replace(epochs=1), tmp_path / "resumed"))
    rest = _curve(_fit(config, tmp_path / "resumed", resume=True))
    assert first + rest == straight


def test_resume_refuses_another_model_shape(tiny_config: TrainConfig, tmp_path: Path) -> None:
    _fit(tiny_config.replace(epochs=1), tmp_path)
    with pytest.raises(ModelError, match=r"hidden_size=32 \(checkpoint has 16\)"):
        _fit(tiny_config.replace(hidden_size=32), tmp_path, resume=True)


def test_diverging_loss_is_reported(tiny_config: TrainConfig, tmp_path: Path) -> None:
    with pytest.raises(TrainingDiverged, match=r"became (nan|inf) at epoch 1"):
        _fit(tiny_config.replace(lr=1e30, epochs=1), tmp_path)
