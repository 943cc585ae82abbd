"""Real-time measurement, the `realtime` command and `separate --stream`.

The commands run in this process through the entry point (`run_main`), except one real
`umx-tune realtime --json` whose stdout must be JSON alone. The pipeline's probe is checked on a
real training run in test_cli_train.py.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import TINY, MlflowServer, assert_one_line_error, run_cli, run_main

from umx_tune import tracking
from umx_tune.config import SAMPLE_RATE, TrainConfig
from umx_tune.errors import ModelError
from umx_tune.separation import speed
from umx_tune.separation.model import build_separator, build_unmix
from umx_tune.tracking.runs import start_run

# a tiny untrained model's shape, as `realtime` options
SHAPE_ARGS = ("--hidden-size", "8", "--nfft", "512", "--nhop", "128", "--device", "cpu")
FAST_ARGS = ("--seconds", "0.5", "--repeats", "1", "--threads", "1")


Capture = pytest.CaptureFixture[str]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_separator(unidirectional: bool) -> torch.nn.Module:
    config = TrainConfig.from_dict({**TINY, "unidirectional": unidirectional})
    torch.manual_seed(0)
    return build_separator(config, build_unmix(config))


def test_separator_is_built_on_its_networks_device() -> None:
    """The STFT window goes with the network (a CUDA network with a CPU window fails in torch.stft);
    the meta device stands in for a GPU here."""
    config = TrainConfig.from_dict(TINY)
    separator = build_separator(config, build_unmix(config).to("meta"))
    assert {tensor.device.type for tensor in [*separator.buffers(), *separator.parameters()]} == {"meta"}


@pytest.fixture(scope="module")
def logged_models(mlflow_server: MlflowServer) -> Iterator[dict[str, str]]:
    """Run ids of two untrained tiny models logged as runs do: 'uni' and 'bi'."""
    mlflow.set_tracking_uri(mlflow_server.uri)
    ids = {}
    for name in ("uni", "bi"):
        with start_run(experiment="test-realtime", run_name=name) as tracker:
            tracker.log_model(tiny_separator(name == "uni"), {})
            ids[name] = tracker.run_id
    mlflow.set_tracking_uri(None)
    yield ids


def test_measure_reports_offline_and_streaming_speed() -> None:
    separator = tiny_separator(unidirectional=True)
    clip = np.random.default_rng(0).standard_normal((2, SAMPLE_RATE // 2)).astype(np.float32)
    m = speed.measure(separator, [clip], torch.device("cpu"), threads=1, block=512)
    assert (m.device, m.threads, m.audio_seconds) == ("cpu", 1, 0.5)
    assert m.rtf > 0 and m.stream is not None
    assert m.stream.block == 512 and m.stream.precision == "float32" and m.stream.rtf > 0
    assert m.stream.latency_ms == pytest.approx(1000 * (1024 - 256 + 2 * 512) / SAMPLE_RATE)
    assert 0 < m.stream.block_ms_median <= m.stream.block_ms_p99
    assert m.stream.block_budget_ms == pytest.approx(1000 * 512 / SAMPLE_RATE)


def test_bidirectional_model_measures_offline_only_unless_streaming_is_asked() -> None:
    separator = tiny_separator(unidirectional=False)
    clip = np.zeros((2, SAMPLE_RATE // 4), np.float32)
    assert speed.measure(separator, [clip], torch.device("cpu"), threads=1).stream is None
    with pytest.raises(ModelError, match="bidirectional"):
        speed.measure(separator, [clip], torch.device("cpu"), threads=1, stream=True)


def test_flops_count_every_weight_once_per_frame() -> None:
    separator = tiny_separator(unidirectional=True)
    hidden, bins, max_bin, nfft = 16, 513, 372, 1024
    weights = 2 * max_bin * hidden + 3 * 2 * 4 * hidden * hidden + 2 * hidden * hidden + hidden * 2 * bins
    ffts = 2 * (1 + 2) * 2.5 * nfft * math.log2(nfft)  # per channel: 1 forward, 2 inverse (target, residual)
    assert speed.flops_per_frame(separator) == pytest.approx(2 * weights + ffts)
    assert speed.flops_per_audio_second(separator) == pytest.approx(
        speed.flops_per_frame(separator) * SAMPLE_RATE / 256
    )


def test_realtime_json_for_an_untrained_config_shaped_model() -> None:
    """The real console script: exit 0 and nothing but the JSON report on stdout."""
    args = ("--unidirectional", *FAST_ARGS, "--block", "256", "--precision", "float16", "--json")
    done = run_cli("realtime", *SHAPE_ARGS, *args)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["shape"]["hidden_size"] == 8 and report["shape"]["unidirectional"] is True
    assert report["audio_seconds"] == pytest.approx(0.5)
    (m,) = report["measurements"]
    assert m["threads"] == 1 and m["device"] == "cpu" and m["rtf"] > 0
    assert m["stream"]["block"] == 256 and m["stream"]["precision"] == "float16" and m["stream"]["rtf"] > 0


def test_realtime_table_of_a_bidirectional_model_measures_offline_only(capsys: Capture) -> None:
    table = run_main(capsys, "realtime", *SHAPE_ARGS, *FAST_ARGS)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.strip().splitlines()
    assert "bidirectional" in lines[0]
    header, (row,) = lines[2].split(), [line.split() for line in lines[3:]]
    cells = dict(zip(header, row, strict=True))
    assert (cells["device"], cells["threads"]) == ("cpu", "1") and float(cells["rtf"]) > 0
    # no streaming measurement: every streaming column is empty
    streaming = [name for name in header if name not in ("device", "threads", "rtf", "rtf_cpu")]
    assert len(streaming) == 8 and {cells[name] for name in streaming} == {"-"}


def test_realtime_log_records_into_the_models_run(
    tracking_uri: str, logged_models: dict[str, str], capsys: Capture
) -> None:
    run_id = logged_models["uni"]
    done = run_main(capsys, "realtime", "--model", run_id, "--device", "cpu", *FAST_ARGS, "--log")
    assert done.returncode == 0, done.stderr
    run = mlflow.MlflowClient().get_run(run_id)
    assert run.data.metrics["rtf_cpu_1t"] > 0 and run.data.metrics["rtf_streaming_cpu_1t"] > 0
    assert run.data.metrics["latency_ms_cpu_1t"] == pytest.approx(1000 * (1024 - 256 + 2 * 256) / SAMPLE_RATE)
    assert run.data.tags[tracking.TAG_RTF_THREADS + "_cpu_1t"] == "1"
    assert run.info.status == "FINISHED"
    listed = mlflow.MlflowClient().list_artifacts(run_id, tracking.REALTIME_ARTIFACT_DIR)
    assert len(listed) == 1 and listed[0].path.endswith(".json")


def test_streaming_metrics_name_a_precision_other_than_float32() -> None:
    separator = tiny_separator(unidirectional=True)
    clip = np.zeros((2, SAMPLE_RATE // 4), np.float32)
    for precision, name in (("float32", "rtf_streaming_cpu_1t"), ("float16", "rtf_streaming_float16_cpu_1t")):
        m = speed.measure(separator, [clip], torch.device("cpu"), threads=1, precision=precision)
        metrics, _ = tracking.realtime_values(m, "_cpu_1t")
        assert set(metrics) == {"rtf_cpu_1t", "rtf_compute_cpu_1t", name, "latency_ms_cpu_1t"} | {
            name.replace("rtf_streaming", quantile) for quantile in ("block_ms_median", "block_ms_p99")
        }


def test_separate_stream_writes_files(
    tmp_path: Path, tracking_uri: str, logged_models: dict[str, str], capsys: Capture
) -> None:
    audio = 0.1 * np.random.default_rng(1).standard_normal((SAMPLE_RATE // 2, 2)).astype(np.float32)
    sf.write(tmp_path / "mix.wav", audio, SAMPLE_RATE, subtype="FLOAT")
    out = tmp_path / "out"
    args = ("separate", "--model", logged_models["uni"], str(tmp_path / "mix.wav"), "--out", str(out))
    done = run_main(capsys, *args, "--device", "cpu", "--stream", "--block", "512", "--precision", "float16")
    assert done.returncode == 0, done.stderr
    vocals, rate = sf.read(out / "mix_vocals.wav", dtype="float32")
    accompaniment, _ = sf.read(out / "mix_accompaniment.wav", dtype="float32")
    assert rate == SAMPLE_RATE and vocals.shape == audio.shape
    # target + residual give the mixture back (the residual is mixture minus target per frame)
    np.testing.assert_allclose(vocals + accompaniment, audio, atol=1e-4)
    assert float(np.abs(vocals).max()) > 0
    bad_block = run_main(capsys, *args, "--device", "cpu", "--stream", "--block", "300")
    assert_one_line_error(bad_block, "multiple of", progress_before=True)
    not_streamed = run_main(capsys, *args, "--device", "cpu", "--precision", "float16")
    assert_one_line_error(not_streamed, "it needs --stream", progress_before=True)


def test_separate_stream_refuses_a_bidirectional_model(
    tmp_path: Path, tracking_uri: str, logged_models: dict[str, str], capsys: Capture
) -> None:
    sf.write(tmp_path / "mix.wav", np.zeros((SAMPLE_RATE // 4, 2), np.float32), SAMPLE_RATE)
    done = run_main(capsys, "separate", "--model", logged_models["bi"], str(tmp_path / "mix.wav"), "--stream")
    assert_one_line_error(done, "bidirectional", progress_before=True)
