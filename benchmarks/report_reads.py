"""How `umx-tune report` reads a study of 100 trials: its HTTP requests and its wall time.

A real `mlflow server` on 127.0.0.1 gets a study parent and 100 finished trial runs shaped as
`umx-tune optimize` leaves them (params, per-epoch metrics and the curves tag, final scores), written
straight through MLflow's client. Then `umx-tune report --study NAME --no-plots` runs in this process
through its entry point, with every HTTP request MLflow's client sends counted by path.

Target (issue 16): a bounded number of requests (not one per trial) and under 5 s.

    .venv/bin/python benchmarks/report_reads.py --trials 100
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
import time
import urllib.parse
from collections import Counter
from pathlib import Path
from typing import Any

import requests
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from servers import start_server

from umx_tune import tracking
from umx_tune.config import TrainConfig

EPOCHS = 10


def write_study(uri: str, name: str, trials: int) -> None:
    """A parent run and `trials` finished trial runs of a study."""
    client = MlflowClient(uri)
    experiment = client.create_experiment(name)
    now = int(time.time() * 1000)
    parent = client.create_run(experiment, now, tags={tracking.TAG_STUDY: name}, run_name=name)
    for number in range(trials):
        config = TrainConfig(hidden_size=16 + number, seed=number)
        curves = {
            tracking.TRAIN_LOSS: [5.0 / (e + 1) for e in range(EPOCHS)],
            tracking.VALID_LOSS: [5.5 / (e + 1) for e in range(EPOCHS)],
            tracking.EPOCH_SECONDS: [3.0] * EPOCHS,
        }
        tags = {
            tracking.TAG_STUDY: name,
            tracking.TAG_PARENT_RUN: parent.info.run_id,
            tracking.TAG_TRIAL_NUMBER: str(number),
            tracking.TAG_TRIAL_STATE: "COMPLETE",
            tracking.TAG_CURVES: tracking.curves_tag(curves),
        }
        run = client.create_run(experiment, now + number, tags=tags, run_name=f"trial-{number}")
        metrics = [Metric(k, v, now, e + 1) for k, vs in curves.items() for e, v in enumerate(vs)]
        finals = {"SDR": 1.0 + number / 100, tracking.TRAIN_SECONDS: 30.0, tracking.REALTIME_FACTOR: 0.1}
        metrics += [Metric(k, v, now, 0) for k, v in finals.items()]
        params = [Param(k, str(v)) for k, v in config.to_params().items()]
        client.log_batch(run.info.run_id, metrics=metrics, params=params)
        client.set_terminated(run.info.run_id, "FINISHED")
    client.set_terminated(parent.info.run_id, "FINISHED")


@contextlib.contextmanager
def counted() -> Any:
    """Every request sent through `requests` (MLflow's HTTP client), counted by path."""
    paths: Counter[str] = Counter()
    send = requests.Session.send

    def counting(self: requests.Session, request: requests.PreparedRequest, **kwargs: Any) -> Any:
        paths[urllib.parse.urlsplit(request.url or "").path] += 1
        return send(self, request, **kwargs)

    requests.Session.send = counting  # type: ignore[method-assign]
    try:
        yield paths
    finally:
        requests.Session.send = send  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=100)
    args = parser.parse_args()
    from umx_tune.cli import main as umx_tune

    with tempfile.TemporaryDirectory(prefix="umx-report-") as tmp:
        server, uri = start_server(Path(tmp))
        try:
            write_study(uri, "report-reads", args.trials)
            os.environ["MLFLOW_TRACKING_URI"] = uri
            out = io.StringIO()
            quiet = contextlib.redirect_stderr(io.StringIO())
            with counted() as paths, contextlib.redirect_stdout(out), quiet:
                start = time.perf_counter()
                with contextlib.suppress(SystemExit):
                    umx_tune(["report", "--study", "report-reads", "--no-plots"])
                seconds = time.perf_counter() - start
        finally:
            server.terminate()
            server.wait()
    rows = out.getvalue().count("| trial-")
    print(
        json.dumps(
            {
                "trials": args.trials,
                "table_rows": rows,
                "requests": sum(paths.values()),
                "requests_by_path": dict(paths),
                "seconds": round(seconds, 2),
                "load_average": round(os.getloadavg()[0], 2),
                "target": "bounded requests, < 5 s",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
