"""Models that run no code, against the session's real server: a logged model is an Open-Unmix
folder read back from a run id, runs:/, models:/ or a local folder; a pickled model is refused
(its planted payload never runs) unless --trust-model; Open-Unmix's own folders separate; and
--init-model fine-tunes from a logged model (lower first validation loss than from scratch) or
fails as one line on a shape that does not fit."""

from __future__ import annotations

import json
import re
from pathlib import Path

import mlflow
import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import TINY, assert_one_line_error, run_main
from openunmix.model import OpenUnmix, Separator

from umx_tune import tracking
from umx_tune.config import SAMPLE_RATE, TrainConfig
from umx_tune.errors import ModelError
from umx_tune.separation.folder import read_model_folder, write_model_folder
from umx_tune.separation.model import build_separator, build_unmix
from umx_tune.tracking.client import Client
from umx_tune.tracking.models import load_separator
from umx_tune.tracking.runs import start_run
from umx_tune.training.trainer import init_weights

CPU = torch.device("cpu")
CONFIG = TrainConfig.from_dict({**TINY, "device": "cpu"})


def tiny_unmix(seed: int, **changes: object) -> OpenUnmix:
    """A TINY-shaped network with seeded weights and per-bin input statistics."""
    config = CONFIG.replace(**changes)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    bins = config.nfft // 2 + 1
    unmix = build_unmix(config, rng.uniform(0.1, 1, bins), rng.uniform(0.5, 2, bins))
    for parameter in unmix.parameters():  # BatchNorm and output scales start as constants
        parameter.data += 0.1 * torch.randn_like(parameter)
    return unmix.eval()


def two_targets(unidirectional: bool = False) -> Separator:
    """vocals and drums in one separator, as `umx-tune compose` builds one."""
    separator = Separator(
        {"vocals": tiny_unmix(1, unidirectional=unidirectional), "drums": tiny_unmix(2)},
        niter=1,
        residual=True,
        sample_rate=SAMPLE_RATE,
        n_fft=CONFIG.nfft,
        n_hop=CONFIG.nhop,
    )
    separator.freeze()
    return separator


def separated(separator: Separator, mix: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return separator(mix)


def assert_same(loaded: Separator, original: Separator, channels: int = 2) -> None:
    """The same networks (weights exactly), settings and STFT; so the same separation (checked)."""
    assert list(loaded.target_models) == list(original.target_models)
    settings = ("niter", "residual", "wiener_win_len", "softmask")
    assert [getattr(loaded, key) for key in settings] == [getattr(original, key) for key in settings]
    for target, unmix in original.target_models.items():
        theirs = loaded.target_models[target].state_dict()
        assert all(torch.equal(theirs[key], value) for key, value in unmix.state_dict().items()), target
    mix = np.random.default_rng(0).standard_normal((1, channels, 4000)).astype("float32")
    mix = torch.from_numpy(mix)
    torch.testing.assert_close(separated(loaded, mix), separated(original, mix), rtol=0, atol=1e-6)


def log_model(separator: Separator, experiment: str) -> str:
    with start_run(experiment=experiment) as tracker:
        tracker.log_model(separator, {"vocals": CONFIG.to_params()})
    return tracker.run_id


def test_a_logged_model_is_an_openunmix_folder_read_back_from_every_kind_of_reference(
    tracking_uri: str, tmp_path: Path
) -> None:
    original = two_targets(unidirectional=True)
    run_id = log_model(original, "test-models-folder")
    local = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model", dst_path=str(tmp_path)))
    names = {p.name for p in local.iterdir()}
    assert {"MLmodel", "separator.json", "vocals.json", "vocals.pth", "drums.json", "drums.pth"} <= names
    assert not any(name.endswith((".pkl", ".pt")) for name in names)
    assert set(mlflow.models.Model.load(str(local / "MLmodel")).flavors) == {tracking.MODEL_FLAVOR}
    args = json.loads((local / "vocals.json").read_text())["args"]
    assert (args["hidden_size"], args["nfft"], args["unidirectional"]) == (16, 1024, True)
    assert args["samples_per_track"] == TINY["samples_per_track"]  # the run's training options
    uri = f"runs:/{run_id}/model"
    registered = Client().register_model(uri, "test-models-folder", run_id)  # as --register-best does
    for ref in (run_id, uri, f"models:/{registered}", str(local)):
        loaded = load_separator(ref, CPU)
        assert not loaded.target_models["vocals"].lstm.bidirectional  # causal stays causal
        assert loaded.target_models["drums"].lstm.bidirectional
        assert_same(loaded, original)


def test_a_folder_keeps_a_mono_network_and_its_wiener_settings(tmp_path: Path) -> None:
    mono = CONFIG.replace(nb_channels=1, target="bass")
    original = Separator(
        {"bass": tiny_unmix(9, nb_channels=1)},
        niter=0,
        residual=True,
        wiener_win_len=None,
        nb_channels=1,
        n_fft=mono.nfft,
        n_hop=mono.nhop,
    )
    write_model_folder(original, tmp_path / "mono", {"bass": mono.to_params()})
    loaded = read_model_folder(tmp_path / "mono", CPU)
    assert loaded.complexnorm.mono and loaded.target_models["bass"].fc1.in_features == 372
    assert_same(loaded, original, channels=1)


class Payload:
    """What an attacker plants in a pickled model: unpickling it calls open(marker, "w")."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (str(self.marker), "w")


def log_pickled(separator: Separator, experiment: str) -> str:
    """separator in MLflow's pytorch flavor, as umx-tune logged models before (a pickle)."""
    import mlflow.pytorch

    mlflow.set_experiment(experiment)
    with mlflow.start_run() as run:
        # requirements given: inferring them would load (and so run) the model
        mlflow.pytorch.log_model(separator, name="model", pip_requirements=[], serialization_format="pickle")
    return run.info.run_id


def write_mix(path: Path, seconds: float = 0.5) -> Path:
    noise = np.random.default_rng(3).uniform(-0.5, 0.5, (int(seconds * SAMPLE_RATE), 2))
    sf.write(path, noise.astype("float32"), SAMPLE_RATE, subtype="FLOAT")
    return path


def test_a_pickled_model_is_refused_and_its_payload_never_runs_unless_trusted(
    tracking_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "payload-ran"
    separator = build_separator(CONFIG, tiny_unmix(4))
    separator.payload = Payload(marker)
    run_id = log_pickled(separator, "test-models-pickle")
    local = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model", dst_path=str(tmp_path / "pickled"))
    planted = tmp_path / "planted"  # an Open-Unmix folder whose weights are the pickle
    write_model_folder(build_separator(CONFIG, tiny_unmix(4)), planted)
    torch.save(separator, planted / "vocals.pth")
    assert not marker.exists()
    mix, out = write_mix(tmp_path / "mix.wav"), tmp_path / "out"
    refused = {
        ("separate", "--model", run_id, str(mix), "--out", str(out)): (
            f"runs:/{run_id}/model",
            "--trust-model",
        ),
        ("separate", "--model", local, str(mix), "--out", str(out)): (local, "--trust-model"),
        ("evaluate", "--model", f"runs:/{run_id}/model"): (f"runs:/{run_id}/model", "--trust-model"),
        ("realtime", "--model", run_id, "--seconds", "0.2"): (f"runs:/{run_id}/model", "--trust-model"),
        ("separate", "--model", str(planted), str(mix), "--out", str(out)): ("vocals.pth", "state dict"),
    }
    for args, words in refused.items():
        assert_one_line_error(run_main(capsys, *args), *words, progress_before=True)
        assert not marker.exists(), args
    assert not out.exists()
    # trusted, a model logged before umx-tune logged folders still separates (the payload runs)
    result = run_main(capsys, "separate", "--model", run_id, "--trust-model", str(mix), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert marker.exists() and len(list(out.iterdir())) == 2


def openunmix_folder(folder: Path) -> Path:
    """A model folder as Open-Unmix's scripts/train.py writes it: its classes, torch.save of the
    state dict, its JSON (args as train.py's, no max_bin) and a hub-style weights name."""
    folder.mkdir()
    torch.manual_seed(5)
    unmix = OpenUnmix(nb_bins=513, nb_channels=2, hidden_size=16, max_bin=372)
    torch.save(unmix.state_dict(), folder / "vocals-0123abcd.pth")
    args = {
        "target": "vocals",
        "nfft": 1024,
        "nhop": 256,
        "nb_channels": 2,
        "hidden_size": 16,
        "bandwidth": 16000,
    }
    (folder / "vocals.json").write_text(json.dumps({"args": args, "best_loss": 1.0, "epochs_trained": 3}))
    separator_conf = {"nfft": 1024, "nhop": 256, "sample_rate": 44100.0, "nb_channels": 2}
    (folder / "separator.json").write_text(json.dumps(separator_conf))
    return folder


def test_separate_reads_a_folder_openunmix_wrote_as_openunmix_separates_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import openunmix.utils

    folder = openunmix_folder(tmp_path / "umx-model")
    mix = write_mix(tmp_path / "song.wav")
    result = run_main(capsys, "separate", "--model", str(folder), str(mix), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    theirs = openunmix.utils.load_separator(str(folder), targets=["vocals"], residual=True, niter=1)
    audio = torch.from_numpy(sf.read(mix, dtype="float32")[0].T.copy())[None]
    expected = separated(theirs.eval(), audio)[0]  # (vocals + residual, channels, samples)
    for k, label in enumerate(("vocals", "accompaniment")):
        ours = sf.read(tmp_path / "out" / f"song_{label}.wav", dtype="float32")[0].T
        np.testing.assert_allclose(ours, expected[k].numpy(), atol=1e-5 * float(expected[k].abs().max()))
    assert read_model_folder(folder, CPU).target_models["vocals"].nb_bins == 372


TRAIN = ["train", "--quiet", "--no-audio", "--no-system-metrics", "--device", "cpu", "--lr", "0.01"]
TINY_ARGS = [arg for name, value in TINY.items() for arg in (f"--{name.replace('_', '-')}", str(value))]


def train(capsys: pytest.CaptureFixture[str], experiment: str, *args: str) -> mlflow.entities.Run:
    """`umx-tune train` of the TINY config (lr 0.01) and args; the run it logged."""
    result = run_main(capsys, *TRAIN, *TINY_ARGS, "--experiment", experiment, *args)
    assert result.returncode == 0, result.stderr
    (run_id,) = re.findall(r"^run ([0-9a-f]{32}) finished", result.stdout, re.MULTILINE)
    return mlflow.MlflowClient().get_run(run_id)


def first_valid_loss(run: mlflow.entities.Run) -> float:
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, tracking.VALID_LOSS)
    return min(history, key=lambda m: m.step).value


def test_fine_tuning_starts_from_a_lower_validation_loss_than_from_scratch(
    tracking_uri: str, synth_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scratch = train(capsys, "test-models-finetune", "--epochs", "3")
    uri = f"runs:/{scratch.info.run_id}/model"
    tuned = train(capsys, "test-models-finetune", "--epochs", "1", "--init-model", uri)
    assert first_valid_loss(tuned) < first_valid_loss(scratch)
    tags = tuned.data.tags
    assert (tags[tracking.TAG_INIT_MODEL], tags[tracking.TAG_INIT_RUN]) == (uri, scratch.info.run_id)
    assert tuned.data.params["init_model"] == uri
    assert tags[tracking.TAG_SIGNATURE] != scratch.data.tags[tracking.TAG_SIGNATURE]


def test_an_init_model_of_another_shape_is_one_line_and_leaves_no_running_run(
    tracking_uri: str, synth_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "init"
    write_model_folder(build_separator(CONFIG, tiny_unmix(6)), folder)
    experiment = "test-models-init-shape"
    args = ("--experiment", experiment, "--hidden-size", "32", "--init-model", str(folder))
    result = run_main(capsys, *TRAIN, *TINY_ARGS, *args)
    assert_one_line_error(result, str(folder), "hidden_size 16 (model) vs 32 (config)")
    client = mlflow.MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert run.info.status == "FAILED"
    separator = load_separator(str(folder), CPU)
    for changes, words in (
        ({"nfft": 2048, "nhop": 512}, "nfft 1024 (model) vs 2048 (config); nhop 256 (model) vs 512 (config)"),
        ({"nb_channels": 1}, "nb_channels 2 (model) vs 1 (config)"),
        ({"bandwidth": 8000.0}, "max_bin 372 (model) vs 186 (config, bandwidth 8000 Hz)"),
        ({"unidirectional": True}, "unidirectional False (model) vs True (config)"),
        ({"target": "drums"}, "has no drums network (it has vocals)"),
    ):
        with pytest.raises(ModelError, match=re.escape(words)):
            init_weights(separator, CONFIG.replace(**changes), str(folder))
    weights = init_weights(separator, CONFIG, str(folder))
    assert weights.keys() == separator.target_models["vocals"].state_dict().keys()
