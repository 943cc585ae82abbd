"""The training loop: determinism, checkpoints and resume, divergence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from umx_tune.config import TrainConfig
from umx_tune.data.dataset import open_dataset
from umx_tune.errors import ModelError
from umx_tune.training.trainer import EpochResult, Trainer, TrainingDiverged, load_checkpoint


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
    _fit(tiny_config, tmp_path)
    payload = load_checkpoint(tmp_path / "checkpoint.pt")
    assert TrainConfig.from_dict(json.loads(payload["config"])) == tiny_config
    state = json.loads(payload["state"])
    assert state["epoch"] == 2 and len(state["valid_losses"]) == 2
    assert {"model", "best_model", "optimizer", "scheduler", "torch_rng"} <= set(payload)


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
