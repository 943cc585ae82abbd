"""`umx-tune report` against a real MLflow server holding a small grid study (written without training).

The command runs in this process through its entry point (`run_main`); one failure runs as a real
process. That `optimize` writes the same description when a study ends is checked on a real study
in test_optimize.py.

The tables are compared number by number with what MLflow holds; csv and json are parsed; the
plots are checked to be real PNGs of a readable size.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import mlflow
import pytest
from conftest import MlflowServer, assert_one_line_error, run_cli, run_main
from cutting_proxy import CuttingProxy
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from study_runs import write_study

from umx_tune import tracking
from umx_tune.report import figures as report_figures
from umx_tune.report import note as report_note
from umx_tune.report import runs as report_runs
from umx_tune.report import tables as report_tables

STUDY = "grid-tiny"
EXPERIMENT = "report-tests"
ORDER = [f"open-unmix{n}" for n in ("", 2, 3, 4, 5, 6)] + ["trial-6", "trial-7", "trial-8"]
Capture = pytest.CaptureFixture[str]
PLOTS = {"loss_curves.png", "scores.png", "loss_vs_time.png", "sdr_vs_rtf.png"}


@dataclass
class Study:
    parent_id: str
    run_ids: dict[str, str]  # trial run name -> run id
    runs: dict[str, Run]  # trial run name -> the run as MLflow returns it
    client: MlflowClient


@pytest.fixture(scope="module")
def study(mlflow_server: MlflowServer) -> Study:
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    parent_id, ids = write_study(client, EXPERIMENT, STUDY)
    runs = {name: client.get_run(run_id) for name, run_id in ids.items()}
    return Study(parent_id, ids, runs, client)


@pytest.fixture(scope="module")
def cli_run(study: Study, mlflow_server: MlflowServer) -> tuple[str, str]:
    """The command, once: markdown to stdout, plots logged to the parent, its note set.

    Returns stdout and the parent run's note right after (later tests rewrite the note).
    """
    mlflow.set_tracking_uri(mlflow_server.uri)
    try:
        done = run_main(None, "report", "--study", STUDY)
    finally:
        mlflow.set_tracking_uri(None)
    assert done.returncode == 0, done.stderr
    return done.stdout, study.client.get_run(study.parent_id).data.tags[tracking.TAG_NOTE]


@pytest.fixture(scope="module")
def cli_report(cli_run: tuple[str, str]) -> str:
    return cli_run[0]


def markdown_tables(text: str) -> list[dict[str, dict[str, str]]]:
    """Each markdown table in text as {first cell: {header: cell}}."""
    tables: list[dict[str, dict[str, str]]] = []
    header: list[str] | None = None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
            tables.append({})
        elif not set(line) <= set("|-: "):
            tables[-1][cells[0]] = dict(zip(header, cells, strict=True))
    return tables


def metric(run: Run, name: str) -> float | None:
    return run.data.metrics.get(name)


# ---- the tables hold what MLflow holds ---------------------------------------------------------


def test_markdown_training_table_matches_mlflow(study: Study, cli_report: str) -> None:
    training, _ = markdown_tables(cli_report)
    assert list(training) == ORDER  # grid entries in natural order, then trial number
    for name, run in study.runs.items():
        row, params = training[name], run.data.params
        for key in ("batch_size", "nb_workers", "hidden_size", "samples_per_track", "epochs"):
            assert row[key] == params[key], (name, key)
        assert row["LSTM"] == ("unidirectional" if params["unidirectional"] == "True" else "bidirectional")
        for key, header in (
            (tracking.TRAIN_LOSS, "final train loss"),
            (tracking.VALID_LOSS, "final valid loss"),
        ):
            value = metric(run, key)
            expected = report_tables.MISSING if value is None else format(value, ".4g")
            assert row[header] == expected, (name, header)
    # the original study's training times, as h:mm:ss
    times = {name: row["training compute"] for name, row in training.items()}
    assert times["open-unmix"] == "0:07:50"
    assert times["open-unmix5"] == "1:18:00"
    assert times["trial-7"] == report_tables.MISSING
    assert training["open-unmix6"]["state"] == "FAIL"
    assert training["trial-7"]["state"] == "RUNNING"


def test_the_report_names_runs_measured_on_a_loaded_machine(cli_report: str) -> None:
    """open-unmix4 carries umx_tune.loaded_machine (its timings are suspect): the legend says so, and
    what the cost columns measure."""
    legend = next(line for line in cli_report.splitlines() if line.startswith("Values:"))
    assert "Measured on a loaded machine: open-unmix4 (" in legend
    assert report_tables.COST_NOTE in legend


def test_markdown_scores_table_matches_mlflow(study: Study, cli_report: str) -> None:
    _, scores = markdown_tables(cli_report)
    assert list(scores) == ORDER
    for name, run in study.runs.items():
        for key in (
            *tracking.SEPARATION_METRICS,
            tracking.REALTIME_FACTOR,
            tracking.REALTIME_FACTOR_STREAMING,
        ):
            value, cell = metric(run, key), scores[name][key]
            if value is None:
                assert cell == report_tables.MISSING, (name, key)
            else:
                assert float(cell) == pytest.approx(value, abs=5e-4), (name, key)
    assert scores["open-unmix3"]["SDR"] == "1.934"
    assert scores["open-unmix5"]["ISR"] == "9.272"
    # trained but never evaluated (the original's open-unmix6): its scores are marked, not dropped
    assert scores["open-unmix6"]["SDR"] == report_tables.MISSING
    assert report_tables.MISSING_NOTE in cli_report


def test_csv_parses_and_holds_exact_values(study: Study, capsys: Capture, tracking_uri: str) -> None:
    done = run_main(capsys, "report", "--study", STUDY, "--format", "csv", "--no-plots")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    rows = {row["name"]: row for row in csv.DictReader(io.StringIO(out))}
    assert list(rows) == ORDER
    for name, run in study.runs.items():
        assert rows[name]["run_id"] == run.info.run_id
        for key in ("SDR", "SAR", tracking.TRAIN_LOSS, tracking.VALID_LOSS):
            value = metric(run, key)
            assert rows[name][key] == ("" if value is None else repr(value)), (name, key)
    assert rows["open-unmix4"]["hidden_size"] == "512"
    assert rows["trial-6"][tracking.REALTIME_FACTOR_STREAMING] == "0.35"


def test_json_parses_with_typed_values(study: Study, capsys: Capture, tracking_uri: str) -> None:
    done = run_main(capsys, "report", "--study", STUDY, "--format", "json", "--no-plots")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    document = json.loads(out)
    assert document["study"] == STUDY
    assert document["parent_run_id"] == study.parent_id
    assert document["tables"]["scores"][:5] == ["name", "SDR", "SIR", "ISR", "SAR"]
    runs = {r["name"]: r for r in document["runs"]}
    assert list(runs) == ORDER
    for name, run in study.runs.items():
        for key in ("SDR", "SIR", "ISR", "SAR", tracking.VALID_LOSS):
            assert runs[name][key] == metric(run, key), (name, key)
    assert runs["open-unmix3"]["grid_entry"] == "open-unmix3"
    assert runs["open-unmix3"]["trial_number"] == 0
    assert runs["open-unmix5"]["batch_size"] == 32
    assert runs["trial-6"]["unidirectional"] is True
    assert runs["trial-7"]["train_seconds"] is None
    assert runs["open-unmix4"]["train_seconds"] == 1869.0
    # a pruned run has no train_seconds: the epochs it finished are summed instead
    assert runs["trial-8"]["state"] == "PRUNED"
    assert runs["trial-8"]["train_seconds"] == pytest.approx(180.0)
    assert runs["trial-8"]["SDR"] is None


class _Tables(HTMLParser):
    """Collects the text of every table cell: tables -> rows -> cells."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []

    def handle_starttag(self, tag: str, attrs: object) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.tables[-1][-1].append("")

    def handle_data(self, data: str) -> None:
        if self.tables and self.tables[-1] and self.tables[-1][-1]:
            self.tables[-1][-1][-1] += data


def test_html_has_both_tables(study: Study, capsys: Capture, tracking_uri: str) -> None:
    done = run_main(capsys, "report", "--study", STUDY, "--format", "html", "--no-plots")
    assert done.returncode == 0 and done.stdout.startswith("<!DOCTYPE html>"), done.stderr
    out = done.stdout
    parser = _Tables()
    parser.feed(out)
    training, scores = ({row[0]: dict(zip(t[0], row, strict=True)) for row in t[1:]} for t in parser.tables)
    assert list(training) == list(scores) == ORDER
    assert training["open-unmix5"]["training compute"] == "1:18:00"
    assert scores["open-unmix2"]["SDR"] == "2.746"
    assert scores["open-unmix6"]["SDR"] == report_tables.MISSING


# ---- plots and the MLflow UI description ------------------------------------------------------


def check_png(path: Path) -> None:
    """A real PNG, big enough to read, not one flat colour."""
    from PIL import Image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as image:
        width, height = image.size
        assert 600 <= width <= 2000 and 400 <= height <= 1200, (path, image.size)
        low, high = image.convert("L").getextrema()
        assert high - low > 100, path


def test_plots_are_logged_to_the_parent_run(study: Study, cli_report: str, tmp_path: Path) -> None:
    artifacts = {
        Path(a.path).name
        for a in study.client.list_artifacts(study.parent_id, report_figures.PLOTS_ARTIFACT_PATH)
    }
    assert artifacts == PLOTS | {"index.html"}  # and the study page (tests/test_study_page.py)
    folder = Path(
        study.client.download_artifacts(study.parent_id, report_figures.PLOTS_ARTIFACT_PATH, str(tmp_path))
    )
    for name in PLOTS:
        check_png(folder / name)


def test_plots_to_a_folder(study: Study, capsys: Capture, tracking_uri: str, tmp_path: Path) -> None:
    done = run_main(capsys, "report", "--study", STUDY, "--out", str(tmp_path / "plots"))
    assert done.returncode == 0, done.stderr
    err = done.stderr
    assert {p.name for p in (tmp_path / "plots").iterdir()} == PLOTS | {"index.html"}
    for path in (tmp_path / "plots").glob("*.png"):
        check_png(path)
        assert f"plot: {path}" in err


def test_parent_run_description_holds_the_tables(cli_run: tuple[str, str]) -> None:
    note = cli_run[1]
    assert note.startswith(
        "**9 trials** (6 complete, 1 fail, 1 running, 1 pruned); best SDR 2.898 dB: **open-unmix5**."
    )
    scores, training = markdown_tables(note)  # scores first: the UI folds long descriptions
    assert list(training) == list(scores) == ORDER
    assert scores["open-unmix3"]["SDR"] == "1.934"
    assert training["open-unmix4"]["training compute"] == "0:31:09"
    assert f"umx-tune report --study '{STUDY}'" in note
    assert "report/scores.png" in note


def test_note_fits_mlflow_tag_limit() -> None:
    rows = [
        report_runs.RunRow(f"{i:032x}", f"trial-{i}", "COMPLETE", {"batch_size": 16}, {"SDR": 1.0})
        for i in range(400)
    ]
    text = report_note.note(report_runs.Report("study big", rows, study="big"))
    assert len(text) <= tracking.MAX_TAG_LENGTH
    scores, training = markdown_tables(text)
    shown = len(training)
    assert 10 < shown < 400 and len(scores) == shown
    assert f"First {shown} of 400 configs shown" in text
    # the note uses the room it has: one more trial (a line as wide as the others in each table, and
    # its newline) would not fit
    line_pair = sum(len(line) + 1 for line in text.splitlines() if line.startswith("| trial-0 "))
    assert len(text) + line_pair > tracking.MAX_TAG_LENGTH


# ---- other sources ---------------------------------------------------------------------------


def test_experiment_lists_trials_not_the_parent(study: Study, capsys: Capture, tracking_uri: str) -> None:
    done = run_main(capsys, "report", "--experiment", EXPERIMENT, "--format", "json")
    assert done.returncode == 0, done.stderr
    out, err = done.stdout, done.stderr
    assert [r["name"] for r in json.loads(out)["runs"]] == ORDER
    assert "give --out DIR" in err  # no parent run to log plots to
    assert "MLflow UI" not in err  # the UI link is a study's


def test_study_prints_where_the_ui_compares_it(study: Study, capsys: Capture, tracking_uri: str) -> None:
    done = run_main(capsys, "report", "--study", STUDY, "--no-plots")
    assert done.returncode == 0, done.stderr
    err = done.stderr
    experiment_id = study.runs["open-unmix"].info.experiment_id
    expected = (
        f"compare in the MLflow UI: {tracking_uri}/#/experiments/{experiment_id}/runs?"
        "workflowType=machine_learning&searchFilter=tags.%60umx_tune.study%60%20%3D%20%27grid-tiny%27"
    )
    assert expected in err.splitlines()


def test_runs_by_id(study: Study, capsys: Capture, tracking_uri: str) -> None:
    ids = [study.run_ids["trial-7"], study.run_ids["open-unmix2"]]
    done = run_main(capsys, "report", "--runs", *ids, "--no-plots")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    training, scores = markdown_tables(out)
    assert list(training) == ["open-unmix2", "trial-7"]
    assert "rtf_streaming" not in next(iter(scores.values()))  # no run has it: column left out


def test_a_study_is_read_in_a_bounded_number_of_requests(
    mlflow_server: MlflowServer, capsys: Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The curves come from each run's curves tag, not a metric-history request per run and metric:
    a study of three times the trials takes the same requests."""
    proxy = CuttingProxy(mlflow_server.uri)
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", proxy.url)
    counts = []
    try:
        for copies in (1, 3):
            write_study(client, f"bounded-{copies}", f"bounded-{copies}", copies=copies)
            proxy.requests.clear()
            done = run_main(capsys, "report", "--study", f"bounded-{copies}", "--no-plots")
            assert done.returncode == 0, done.stderr
            assert "| open-unmix5 " in done.stdout
            assert not [path for path in proxy.requests if "get-history" in path], proxy.requests
            counts.append(sum(proxy.requests.values()))
    finally:
        proxy.close()
    assert counts[0] == counts[1] <= 12, counts


# ---- bad input: one line, exit 2 -------------------------------------------------------------


@pytest.fixture(scope="module")
def empty_study(study: Study) -> Iterator[str]:
    """A study whose parent run exists but no trial has started yet."""
    experiment_id = study.client.get_experiment_by_name(EXPERIMENT).experiment_id
    study.client.create_run(experiment_id, tags={tracking.TAG_STUDY: "empty"}, run_name="empty")
    yield "empty"


def test_unknown_study_in_a_real_process(study: Study, mlflow_server: MlflowServer) -> None:
    done = run_cli("report", "--study", "nope", MLFLOW_TRACKING_URI=mlflow_server.uri, timeout=240)
    assert_one_line_error(done, "no study named 'nope'")
    assert done.stdout == ""


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--experiment", "nope"), ("no experiment named 'nope'",)),
        (("--study", STUDY, "--experiment", "nope"), ("no experiment named 'nope'",)),
        (("--study", "empty"), ("study 'empty' has no trial runs yet",)),
        (("--runs", "0123456789abcdef0123456789abcdef"), ("no run with id",)),
        (("--runs",), ("give run ids after --runs",)),
        (("--study", STUDY, "0123abcd"), ("unexpected argument '0123abcd'",)),
        (("--runs", "0123abcd", "--study", STUDY), ("either --runs or --study",)),
        ((), ("--study NAME",)),
    ],
)
def test_nothing_to_report(
    args: tuple[str, ...],
    words: tuple[str, ...],
    empty_study: str,
    capsys: Capture,
    tracking_uri: str,
) -> None:
    done = run_main(capsys, "report", *args)
    assert_one_line_error(done, *words)
    assert done.stdout == ""
