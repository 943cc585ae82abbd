"""Every bad input is one line and exit 2, and leaves nothing behind (issue 15): one table of
(command, expected exit, a word the message must contain), each row run in this process through the
real entry point (`run_main`) against the session's MLflow server; after each row no run it made
is RUNNING or FINISHED (a run a command started and then refused ends FAILED), no Optuna study was
made and no trial is RUNNING, and no file was written where the row pointed its output.

Also here: the two computations behind bad output, a mono model's NaN audio (a float64 Wiener
filter) and non-finite estimates or scores (refused, never written or logged).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pytest
import soundfile as sf
import torch
from conftest import TINY, MlflowServer, assert_one_line_error, free_port, run_main
from mlflow.tracking import MlflowClient

from umx_tune.cli.options import option_name
from umx_tune.config import SAMPLE_RATE, TrainConfig
from umx_tune.errors import EvaluationError, ModelError
from umx_tune.evaluation.scoring import require_defined
from umx_tune.separation.model import build_separator, build_unmix
from umx_tune.separation.offline import require_finite, separate
from umx_tune.tracking.runs import start_run

TINY_ARGS = tuple(arg for name, value in TINY.items() for arg in (option_name(name), str(value)))
# what realtime measures: a tiny untrained model's shape, half a second, one repeat
SHAPE_ARGS = ("--hidden-size", "8", "--nfft", "512", "--nhop", "128", "--device", "cpu", "--seconds", "0.5")
NO_RUN_ID = "0123456789abcdef0123456789abcdef"
ROOT = os.geteuid() == 0  # root writes into any folder whatever its mode

Capture = pytest.CaptureFixture[str]


@dataclass(frozen=True)
class Row:
    """A command (its arguments after `umx-tune`; {tmp}, {model}, {nan_model}, {storage} and
    {port} filled in), the exit status and a word its one error line must hold."""

    args: tuple[str, ...]
    word: str
    code: int = 2
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None  # a folder of {tmp} to run in
    loads_model: bool = False  # MLflow's download progress may precede the error line


def train(*args: str, word: str, env: dict[str, str] | None = None, cwd: str | None = None) -> Row:
    return Row(("train", *TINY_ARGS, "--device", "cpu", *args), word, env=env or {}, cwd=cwd)


def optimize(*args: str, word: str, env: dict[str, str] | None = None) -> Row:
    return Row(("optimize", "--storage", "{storage}", *args, *TINY_ARGS), word, env=env or {})


def separate_file(name: str, word: str, *args: str, model: str = "{model}") -> Row:
    return Row(
        ("separate", "--model", model, f"{{tmp}}/{name}", "--out", "{tmp}/out", *args), word, loads_model=True
    )


def realtime(*args: str, word: str) -> Row:
    return Row(("realtime", *SHAPE_ARGS, *args), word)


BOGUS = {"MLFLOW_TRACKING_URI": "bogus://x"}
NO_SERVER = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:{port}"}

ROWS = {
    # train: configuration values (TrainConfig's bounds and relations), files and stores
    "hidden-size-0": train("--hidden-size", "0", word="hidden_size=0 is out of range; must be >= 1"),
    "hidden-size-huge": train(
        "--hidden-size", "1000000000", word="hidden_size=1000000000 is out of range; must be <= 4096"
    ),
    "batch-size-0": train("--batch-size", "0", word="batch_size=0 is out of range; must be >= 1"),
    "nfft-huge": train("--nfft", "131072", word="nfft=131072 is out of range; must be <= 65536"),
    "epochs-huge": train("--epochs", "1000000", word="epochs=1000000 is out of range; must be <= 100000"),
    "seq-dur-too-long": train("--seq-dur", "3", word="seq_dur=3 s is longer than the synthetic tracks"),
    "seq-dur-tiny": train("--seq-dur", "1e-9", word="seq_dur=1e-09 s is shorter than one STFT window"),
    "target": train("--target", "piano", word="'piano' is not one of 'vocals', 'drums', 'bass', 'other'"),
    "nfft-not-power-of-two": train("--nfft", "1000", word="nfft=1000 must be a power of two"),
    "nhop-above-nfft": train("--nhop", "2048", word="nhop=2048 must be < nfft=1024"),
    "nhop-equal-nfft": train("--nhop", "1024", word="nhop=1024 must be < nfft=1024"),
    "bandwidth": train("--bandwidth", "30000", word="bandwidth=30000 Hz is above Nyquist"),
    "root-missing": train("--root", "/no/such/folder", word="root='/no/such/folder' does not exist"),
    "unknown-option": train("--learning-rate", "0.1", word="--learning-rate"),
    "checkpoint-dir": train("--checkpoint-dir", "{tmp}/afile/ck", word="cannot write checkpoints to"),
    "store-unwritable": train(
        word="cannot write the MLflow store", env={"MLFLOW_TRACKING_URI": "sqlite:///{tmp}/afile/mlflow.db"}
    ),
    "cwd-unwritable": train(
        word="cannot write the MLflow store", env={"MLFLOW_TRACKING_URI": ""}, cwd="locked"
    ),
    "train-bogus-uri": train(word="MLflow cannot use tracking URI 'bogus://x'", env=BOGUS),
    "train-no-server": train(word="does not answer", env=NO_SERVER),
    # optimize: plans, names, storage
    "grid-unknown": optimize("--grid", "sed", word="unknown grid 'sed'"),
    "space-unknown": optimize("--search", "wide", word="unknown space 'wide'"),
    "grid-malformed": optimize(
        "--grid", "{tmp}/malformed.yaml", word="malformed.yaml: malformed YAML at line 3"
    ),
    "grid-bounds": optimize(
        "--grid", "{tmp}/bounds.yaml", word="bounds.yaml: entry 'b': batch_size=0 is out of range"
    ),
    "grid-unknown-param": optimize(
        "--grid", "{tmp}/unknown.yaml", word="unknown.yaml: entry 'a': unknown parameter 'hidden'"
    ),
    "space-unknown-param": optimize(
        "--search", "{tmp}/space.yaml", word="space.yaml: params.hidden: unknown parameter 'hidden'"
    ),
    "n-trials-0": optimize(
        "--search", "default", "--n-trials", "0", word="'--n-trials': 0 is not in the range x>=1"
    ),
    "sampler": optimize("--search", "default", "--sampler", "annealing", word="unknown sampler 'annealing'"),
    "pruner": optimize("--search", "default", "--pruner", "mean", word="unknown pruner 'mean'"),
    "grid-and-search": optimize(
        "--grid", "seed", "--search", "default", word="give --grid or --search, not both"
    ),
    "study-unknown": optimize(
        "--study-name", "nobody-made-this", word="no study named 'nobody-made-this' yet"
    ),
    "study-quoted": optimize("--study-name", "o'brien", word='no study named "o\'brien" yet'),
    "study-non-ascii": optimize("--study-name", "études 2026", word="no study named 'études 2026' yet"),
    "storage-unwritable": Row(
        ("optimize", "--storage", "sqlite:///{tmp}/afile/optuna.db", "--grid", "seed"),
        "cannot write the Optuna storage",
    ),
    "optimize-checkpoint-dir": optimize(
        "--grid", "seed", "--checkpoint-dir", "{tmp}/afile/ck", word="cannot write checkpoints to"
    ),
    "optimize-bogus-uri": optimize(
        "--grid", "seed", word="MLflow cannot use tracking URI 'bogus://x'", env=BOGUS
    ),
    "optimize-bogus-uri-no-storage": Row(
        ("optimize", "--grid", "seed"),
        "cannot derive an Optuna storage from tracking URI 'bogus://x'",
        env=BOGUS,
    ),
    # separate: audio files, the output folder, models
    "audio-missing": separate_file("missing.wav", "does not exist"),
    "audio-empty-file": separate_file("empty.wav", "cannot read audio file"),
    "audio-not-audio": separate_file("text.wav", "cannot read audio file"),
    "audio-fake-mp3": separate_file("fake.mp3", "cannot read audio file"),
    "audio-no-frames": separate_file("noframes.wav", "holds no audio"),
    "audio-too-short": separate_file("short.wav", "this model (nfft 1024) needs more than 512"),
    "audio-three-channels": separate_file("three.wav", "has 3 channels; umx-tune models take mono or stereo"),
    "out-unwritable": Row(
        ("separate", "--model", "{model}", "{tmp}/mix.wav", "--out", "{tmp}/afile/sep"),
        "cannot write the separated audio",
    ),
    "model-missing": separate_file(
        "mix.wav", f"cannot load model 'runs:/{NO_RUN_ID}/model'", model=NO_RUN_ID
    ),
    "model-gives-nan": separate_file("mix.wav", "NaN or infinite samples", model="{nan_model}"),
    # realtime
    "block-below-hop": realtime("--unidirectional", "--block", "64", word="multiple of the model's STFT hop"),
    "block-not-multiple": realtime(
        "--unidirectional", "--block", "200", word="multiple of the model's STFT hop"
    ),
    "threads-0": realtime("--threads", "0", word="must be >= 1"),
    "threads-negative": realtime("--threads", "-2", word="must be >= 1"),
    "stream-bidirectional": realtime("--stream", word="bidirectional LSTM"),
    "precision": realtime(
        "--unidirectional", "--precision", "bfloat16", word="'bfloat16' is not one of 'float32', 'float16'"
    ),
    "log-without-model": realtime("--log", word="give --model"),
    "realtime-48khz": realtime("--audio", "{tmp}/48k.wav", word="has sample rate 48000 Hz"),
    "realtime-too-short": realtime(
        "--nfft", "1024", "--nhop", "256", "--audio", "{tmp}/short.wav", word="needs more than 512"
    ),
    "realtime-three-channels": realtime("--audio", "{tmp}/three.wav", word="has 3 channels"),
    "realtime-model-missing": Row(
        ("realtime", "--model", NO_RUN_ID, "--device", "cpu"),
        f"cannot load model 'runs:/{NO_RUN_ID}/model'",
        loads_model=True,
    ),
    # evaluate, report
    "pretrained-offline": Row(
        ("evaluate", "--pretrained", "umxhq", *TINY_ARGS[TINY_ARGS.index("--synth-tracks") :]),
        "cannot download the pretrained umxhq weights",
        env={"TORCH_HOME": "{tmp}/torch-home"},
    ),
    "report-format": Row(("report", "--study", "any", "--format", "xml"), "'xml'"),
    "report-out-unwritable": Row(
        ("report", "--study", "any", "--out", "{tmp}/afile/report"), "cannot write the report"
    ),
    "report-bogus-uri": Row(
        ("report", "--study", "any"), "MLflow cannot use tracking URI 'bogus://x'", env=BOGUS
    ),
    "report-no-server": Row(("report", "--study", "any"), "does not answer", env=NO_SERVER),
}

if not torch.cuda.is_available():  # the row needs a machine without CUDA
    ROWS["realtime-no-cuda"] = Row(("realtime", "--hidden-size", "8", "--device", "cuda"), "not available")


def _silence(seconds: float, channels: int, rate: int = SAMPLE_RATE) -> np.ndarray:
    return np.full((int(seconds * rate), channels), 0.1, np.float32)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bad (and good) files the rows point at."""
    tmp = tmp_path_factory.mktemp("bad-input")
    (tmp / "afile").write_text("a file where a folder should be\n")
    (tmp / "empty.wav").write_bytes(b"")
    (tmp / "text.wav").write_text("not audio\n")
    (tmp / "fake.mp3").write_text("not audio either\n")
    sf.write(tmp / "noframes.wav", np.zeros((0, 2), np.float32), SAMPLE_RATE)
    sf.write(tmp / "short.wav", _silence(0.001, 2), SAMPLE_RATE)  # 44 samples
    sf.write(tmp / "three.wav", _silence(0.5, 3), SAMPLE_RATE)
    sf.write(tmp / "48k.wav", _silence(0.5, 2, 48000), 48000)
    rng = np.random.default_rng(0)
    sf.write(
        tmp / "mix.wav", 0.1 * rng.standard_normal((SAMPLE_RATE // 2, 2)).astype(np.float32), SAMPLE_RATE
    )
    (tmp / "malformed.yaml").write_text("entries:\n  a: [1, 2\n")
    (tmp / "bounds.yaml").write_text("entries:\n  a: {hidden_size: 16}\n  b: {batch_size: 0}\n")
    (tmp / "unknown.yaml").write_text("entries:\n  a: {hidden: 16}\n")
    (tmp / "space.yaml").write_text("params:\n  hidden: {type: int, low: 8, high: 16}\n")
    (tmp / "locked").mkdir(mode=0o500)
    return tmp


def _separator(**changes: object) -> torch.nn.Module:
    config = TrainConfig.from_dict({**TINY, **changes})
    torch.manual_seed(0)
    return build_separator(config, build_unmix(config))


@pytest.fixture(scope="module")
def models(mlflow_server: MlflowServer) -> Iterator[dict[str, str]]:
    """Run ids of two tiny untrained models logged as runs log them: 'model', and 'nan_model' whose
    weights are NaN."""
    nan = _separator()
    with torch.no_grad():
        for p in nan.parameters():
            p.fill_(float("nan"))
    separators = {"model": _separator(), "nan_model": nan}
    mlflow.set_tracking_uri(mlflow_server.uri)
    ids = {}
    for name, separator in separators.items():
        with start_run(experiment="test-bad-input", run_name=name) as tracker:
            tracker.log_model(separator, {})
            ids[name] = tracker.run_id
    mlflow.set_tracking_uri(None)
    yield ids


def _unfinished_or_finished(client: MlflowClient) -> set[str]:
    """Ids of the server's runs that are RUNNING or FINISHED (what a refused command must not add)."""
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, "attributes.status != 'FAILED'", max_results=50000) if ids else []
    return {run.info.run_id for run in runs}


@pytest.mark.parametrize("row", list(ROWS.values()), ids=list(ROWS))
def test_bad_input_is_one_line_and_leaves_nothing_behind(
    row: Row,
    inputs: Path,
    models: dict[str, str],
    tracking_uri: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Capture,
) -> None:
    if row.cwd and ROOT:
        pytest.skip("root writes into any folder: an unwritable working directory needs another user")
    storage = tmp_path / "optuna.db"
    values = {"tmp": str(inputs), "storage": f"sqlite:///{storage}", "port": str(free_port()), **models}
    client = MlflowClient(tracking_uri)
    before = _unfinished_or_finished(client)
    for name, value in row.env.items():
        monkeypatch.setenv(name, value.format(**values))
    if "MLFLOW_TRACKING_URI" in row.env:  # an explicitly set URI would win over the environment
        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"] or None)
    if row.cwd:
        monkeypatch.chdir(inputs / row.cwd)
    try:
        done = run_main(capsys, *(arg.format(**values) for arg in row.args))
    finally:
        mlflow.set_tracking_uri(tracking_uri)
    assert done.returncode == row.code
    assert_one_line_error(done, row.word, progress_before=row.loads_model)
    assert _unfinished_or_finished(client) == before
    assert not (inputs / "out").exists()  # no output folder, not even an empty one
    if storage.exists():
        assert not optuna.get_all_study_names(f"sqlite:///{storage}")


def test_a_mono_model_writes_no_nan_on_mono_input(tracking_uri: str, tmp_path: Path, capsys: Capture) -> None:
    """A mono model on a mono (duplicated: dual-mono) mixture: in float32 the Wiener EM's rank-one
    channel covariances cancel to NaN in about 14% of the samples; umx-tune filters in float64."""
    mono = _separator(nb_channels=1)
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    sf.write(tmp_path / "tone.wav", tone, SAMPLE_RATE, subtype="PCM_16")
    with torch.no_grad():  # the defect as it was: the same separator in float32
        dual = torch.from_numpy(np.repeat(sf.read(tmp_path / "tone.wav", dtype="float32")[0][None], 2, 0))
        assert torch.isnan(mono(dual[None])).any()
    with start_run(experiment="test-bad-input", run_name="mono") as tracker:
        tracker.log_model(mono, {})
    out = tmp_path / "out"
    done = run_main(
        capsys, "separate", "--model", tracker.run_id, str(tmp_path / "tone.wav"), "--out", str(out)
    )
    assert done.returncode == 0, done.stderr
    for path in sorted(out.iterdir()):
        audio, _ = sf.read(path)
        assert audio.shape == (SAMPLE_RATE, 2) and np.isfinite(audio).all(), path.name
    # and the same float64 result for stereo input whose channels are equal
    estimates = separate(mono, dual.numpy(), torch.device("cpu"))
    assert all(np.isfinite(e).all() for e in estimates.values())


def test_non_finite_estimates_and_scores_are_refused() -> None:
    with pytest.raises(ModelError, match="1 NaN or infinite samples of 4 in the vocals estimate"):
        require_finite({"vocals": np.array([[0.0, np.nan], [0.0, 0.0]], np.float32)})
    with pytest.raises(EvaluationError, match="the vocals SIR over the test tracks is nan"):
        require_defined({"vocals": {"SDR": 1.0, "SIR": float("nan")}})
