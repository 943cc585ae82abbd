"""`umx-tune realtime`: offline and streaming separation speed of a model, as a table or JSON."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from umx_tune.cli.options import (
    MODEL_REFERENCE,
    TRUST_MODEL,
    config_options,
    pop_config_values,
    precision_option,
)
from umx_tune.config import MODEL_SHAPING, SAMPLE_RATE, TrainConfig

# torch, openunmix and MLflow load only when the command runs: `umx-tune --help` stays quick
if TYPE_CHECKING:
    import torch
    from openunmix.model import Separator

    from umx_tune.separation.speed import Measurement


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _stream(attr: str, spec: str) -> Callable[[dict], str]:
    return lambda m: _fmt((m["stream"] or {}).get(attr), spec)


# The table's columns, declared once: header and how a measurement (as in the JSON) shows in it.
COLUMNS: tuple[tuple[str, Callable[[dict], str]], ...] = (
    ("device", lambda m: m["device"]),
    ("threads", lambda m: str(m["threads"])),
    ("rtf", lambda m: _fmt(m["rtf"], ".3f")),
    ("rtf_cpu", lambda m: _fmt(m["rtf_cpu"], ".3f")),
    ("precision", _stream("precision", "s")),
    ("rtf_streaming", _stream("rtf", ".3f")),
    ("rtf_streaming_cpu", _stream("rtf_cpu", ".3f")),
    ("block", _stream("block", "d")),
    ("latency_ms", _stream("latency_ms", ".1f")),
    ("block_ms_median", _stream("block_ms_median", ".2f")),
    ("block_ms_p99", _stream("block_ms_p99", ".2f")),
    ("budget_ms", _stream("block_budget_ms", ".1f")),
)


def format_table(report: dict[str, Any]) -> str:
    """The report as text: a header about the model and audio, then one row per measurement."""
    shape = report["shape"]
    lines = [
        f"model {report['model']}: hidden_size {shape['hidden_size']}, "
        f"{'unidirectional' if shape['unidirectional'] else 'bidirectional'}, "
        f"{shape['max_bin']}/{shape['nb_bins']} bins, nfft {shape['nfft']}, nhop {shape['nhop']}, "
        f"{shape['nb_channels']} channel(s)",
        f"audio {report['audio_seconds']:.1f} s at {SAMPLE_RATE} Hz; processor {report['processor']}; "
        f"{report['flops_per_audio_second'] / 1e9:.2f} GFLOP per second of audio; "
        f"load average {report['load_average'][0]:.2f}",
    ]
    rows = [[header for header, _ in COLUMNS]]
    rows += [[cell(m) for _, cell in COLUMNS] for m in report["measurements"]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines += ["  ".join(text.rjust(width) for text, width in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def build_report(source: str, separator: Separator, measurements: list[Measurement]) -> dict[str, Any]:
    """Everything the table shows, as a JSON-ready dict."""
    from umx_tune.separation import speed as rt

    return {
        "model": source,
        "shape": rt.model_shape(separator),
        "processor": measurements[0].processor,
        "audio_seconds": measurements[0].audio_seconds,
        "flops_per_frame": rt.flops_per_frame(separator),
        "flops_per_audio_second": rt.flops_per_audio_second(separator),
        "load_average": list(os.getloadavg()),
        "measurements": [m.to_dict() for m in measurements],
    }


def _separator(
    model_ref: str | None, trust_model: bool, shape: dict[str, Any], device: torch.device
) -> tuple[Separator, str]:
    """The model, or an untrained one of the shape the options give; and its description."""
    from umx_tune.separation.model import build_separator, build_unmix

    if model_ref:
        from umx_tune.tracking.models import load_model

        if shape:
            names = ", ".join("--" + name.replace("_", "-") for name in shape)
            raise click.UsageError(f"{names} shape an untrained model; --model has its own shape")
        loaded = load_model(model_ref, device, trust_model=trust_model)
        return loaded.separator, loaded.source
    config = TrainConfig.from_dict(shape)
    return build_separator(config, build_unmix(config).to(device)), "untrained (config shape)"


@click.command("realtime")
@click.option("--model", "model_ref", default=None, help=f"{MODEL_REFERENCE} [default: untrained model]")
@TRUST_MODEL
@config_options(only=(*MODEL_SHAPING, "device"))
@click.option(
    "--threads",
    type=int,
    multiple=True,
    help="torch threads; repeat for several [default: torch's current count]",
)
@click.option("--block", type=int, default=None, help="streaming block in samples [default: one STFT hop]")
@click.option(
    "--stream/--no-stream", default=None, help="measure streaming [default: when the model is unidirectional]"
)
@precision_option
@click.option(
    "--seconds", type=click.FloatRange(min=0.1), default=30.0, show_default=True, help="audio length"
)
@click.option(
    "--audio",
    "audio_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="44.1 kHz audio file to measure on [default: seeded noise]",
)
@click.option(
    "--repeats",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="offline runs (the fastest counts)",
)
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
@click.option("--log", "log_run", is_flag=True, help="record the measurements in the model's MLflow run")
def realtime(
    model_ref: str | None,
    trust_model: bool,
    threads: tuple[int, ...],
    block: int | None,
    stream: bool | None,
    precision: str,
    seconds: float,
    audio_path: Path | None,
    repeats: int,
    as_json: bool,
    log_run: bool,
    **values: Any,
) -> None:
    """Measure offline and streaming separation speed (real-time factor, latency, block times)."""
    import torch

    from umx_tune.errors import ConfigError
    from umx_tune.separation import speed as rt
    from umx_tune.separation.model import resolve_device
    from umx_tune.tracking.models import model_run_id
    from umx_tune.tracking.runs import log_realtime_to_run

    given = pop_config_values(values)
    device = resolve_device(given.pop("device", "auto"))
    for count in threads:
        if count <= 0:
            raise ConfigError(f"--threads {count}: the thread count must be >= 1")
    if log_run and not model_ref:
        raise click.UsageError("--log records into the model's run; give --model")
    run_id = model_run_id(_uri(model_ref)) if log_run else None
    separator, source = _separator(model_ref, trust_model, given, device)
    rt.stream_block(separator, block, stream)  # bad block / streaming a bidirectional model: fail first
    clips = [rt.measurement_audio(audio_path, seconds, 2)]
    measurements = [
        rt.measure(
            separator,
            clips,
            device,
            threads=count,
            block=block,
            stream=stream,
            precision=precision,
            repeats=repeats,
        )
        for count in threads or (torch.get_num_threads(),)
    ]
    report = build_report(source, separator, measurements)
    text = json.dumps(report, indent=2)
    if run_id is not None:
        log_realtime_to_run(run_id, measurements, text)
    click.echo(text if as_json else format_table(report))


def _uri(model_ref: str | None) -> str:
    from umx_tune.tracking.models import model_uri

    return model_uri(model_ref or "")
