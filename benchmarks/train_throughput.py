"""Training throughput: umx-tune's trainer against Open-Unmix's reference loop, and MLflow's cost
(per-epoch logging and MLflow's system metrics, as shares of an epoch).

Prints JSON. Both loops train the same OpenUnmix (same config, same synthetic WAV tracks, same
threads) for the same number of batches, interleaved run by run so that machine noise hits both
alike. The reference reproduces `scripts/train.py`'s train() with `openunmix.data.MUSDBDataset`
(random track mix, gain and channel-swap augmentation), which reads every chunk through musdb.
Data-loading share = time to iterate the same DataLoader alone / time of the training pass.
The ceiling: the same network's forward + backward + step on umx-tune's batches already in memory,
which no data pipeline can beat (issue 16: umx-tune's trainer at >= 0.9 of it, hidden 512, batch 16).
With --compare-sourcefolder, umx-tune's training pass on the synthetic tracks read as musdb and
as Open-Unmix's sourcefolder layout of the same files (`train/<source>/<track>.wav`, symlinks):
the same reads, so the two rates should agree (issue 13: within 10%).

    .venv/bin/python benchmarks/train_throughput.py            # hidden 512/batch 16 and 256/batch 8
    .venv/bin/python benchmarks/train_throughput.py --quick    # fewer batches, one repeat
    .venv/bin/python benchmarks/train_throughput.py --logging-only   # MLflow's cost alone
    .venv/bin/python benchmarks/train_throughput.py --compare-sourcefolder   # sourcefolder vs musdb
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from umx_tune.config import TARGETS, TrainConfig
from umx_tune.data.dataset import DatasetSplits, open_dataset
from umx_tune.separation.model import build_encoder, build_unmix
from umx_tune.training.trainer import EpochResult, Trainer


def reference_loader(config: TrainConfig, root: Path) -> DataLoader:
    """Open-Unmix's training DataLoader over the same folder (musdb + ffmpeg per chunk)."""
    from openunmix import data

    dataset = data.MUSDBDataset(
        target=config.target,
        root=str(root),
        is_wav=True,
        subsets="train",
        split="train",
        seq_duration=config.seq_dur,
        samples_per_track=config.samples_per_track,
        source_augmentations=data.aug_from_str(["gain", "channelswap"]),
        random_track_mix=True,
        seed=config.seed,
        setup_file="setup.yaml",
    )
    return DataLoader(dataset, batch_size=config.batch_size, shuffle=True, num_workers=config.nb_workers)


def reference_train(config: TrainConfig, batches: Iterable) -> None:
    """scripts/train.py's train(): MSE between magnitudes, Adam, one step per batch."""
    encoder = build_encoder(config)
    unmix = build_unmix(config)
    optimizer = torch.optim.Adam(unmix.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    unmix.train()
    for x, y in batches:
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(unmix(encoder(x)), encoder(y))
        loss.backward()
        optimizer.step()


def take(loader: DataLoader, count: int) -> Iterable:
    for index, batch in enumerate(loader):
        if index == count:
            return
        yield batch


def timed(func: Callable[[], object]) -> float:
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def measure(config: TrainConfig, nb_batches: int, repeats: int) -> dict:
    """Interleaved reference / umx-tune passes of nb_batches each; medians of samples per second."""
    data = open_dataset(config)
    # one epoch of umx-tune = nb_batches batches: chunks per track chosen to match
    ours_config = config.replace(samples_per_track=nb_batches * config.batch_size // len(data.train))
    trainer = Trainer(ours_config, data, torch.device("cpu"), Path("/tmp/umx-bench-ckpt"), progress=False)
    samples = len(trainer.train_set)
    ref_loader = reference_loader(config, data.root)
    results: dict[str, list[float]] = {
        k: [] for k in ("ref_s", "ref_load_s", "ours_s", "ours_load_s", "ceiling_s")
    }
    in_memory = list(trainer.train_loader(1))
    for _ in range(repeats):
        results["ceiling_s"].append(timed(lambda: reference_train(ours_config, in_memory)))
        results["ref_s"].append(timed(lambda: reference_train(config, take(ref_loader, nb_batches))))
        results["ref_load_s"].append(timed(lambda: list(take(ref_loader, nb_batches))))
        unmix = build_unmix(ours_config)
        optimizer, _ = trainer.make_optimizer(unmix)
        results["ours_s"].append(timed(lambda: trainer.train_epoch(unmix, optimizer, 1)))  # noqa: B023
        results["ours_load_s"].append(timed(lambda: list(trainer.train_loader(1))))
    ref_samples = nb_batches * config.batch_size
    med = {k: statistics.median(v) for k, v in results.items()}
    return {
        "hidden_size": config.hidden_size,
        "batch_size": config.batch_size,
        "samples_per_pass": {"reference": ref_samples, "umx_tune": samples},
        "reference_samples_per_s": round(ref_samples / med["ref_s"], 3),
        "umx_tune_samples_per_s": round(samples / med["ours_s"], 3),
        "ratio": round((samples / med["ours_s"]) / (ref_samples / med["ref_s"]), 2),
        "ceiling_samples_per_s": round(samples / med["ceiling_s"], 3),
        "umx_tune_of_ceiling": round(med["ceiling_s"] / med["ours_s"], 3),
        "reference_loading_share": round(med["ref_load_s"] / med["ref_s"], 3),
        "umx_tune_loading_share": round(med["ours_load_s"] / med["ours_s"], 3),
        "raw_seconds": results,
    }


def sourcefolder_layout(data: DatasetSplits) -> Path:
    """Open-Unmix's sourcefolder layout of a MUSDB-layout dataset: `<split>/<source>/<track>.wav`,
    each a symlink to the track's stem (the same audio, read through the other type)."""
    root = Path(tempfile.mkdtemp(prefix="umx-bench-sourcefolder-"))
    for split, tracks in (("train", data.train), ("valid", data.valid), ("test", data.test)):
        for track in tracks:
            for source in TARGETS:
                (root / split / source).mkdir(parents=True, exist_ok=True)
                (root / split / source / f"{track.name}.wav").symlink_to(track.files[source])
    return root


def compare_sourcefolder(config: TrainConfig, nb_batches: int, repeats: int) -> dict:
    """Interleaved umx-tune training passes over the same audio as musdb and as sourcefolder, the
    same number of chunks each: medians of samples per second, of the ratio within each pair of
    passes (the two of a pair run back to back, so a busy machine slows both alike) and of the
    loading alone (the DataLoader without the model, where the two types differ at all: in 5 times
    as many pairs, since a pass of it is short)."""
    data = open_dataset(config)
    musdb = config.replace(samples_per_track=max(1, nb_batches * config.batch_size // len(data.train)))
    samples = len(data.train) * musdb.samples_per_track
    sourcefolder = config.replace(
        dataset="sourcefolder",
        root=str(sourcefolder_layout(data)),
        target_dir=config.target,
        interferer_dirs=" ".join(t for t in TARGETS if t != config.target),
        nb_train_samples=samples,
        nb_valid_samples=1,
    )
    trainers = {
        name: Trainer(c, open_dataset(c), torch.device("cpu"), Path(tempfile.mkdtemp()), progress=False)
        for name, c in (("musdb", musdb), ("sourcefolder", sourcefolder))
    }
    seconds: dict[str, list[float]] = {name: [] for name in trainers}
    loading: dict[str, list[float]] = {name: [] for name in trainers}
    for repeat in range(repeats):
        # ABBA: each type goes first in every other pair, so an order effect cancels out
        for name, trainer in sorted(trainers.items(), reverse=bool(repeat % 2)):
            unmix = build_unmix(trainer.config)
            optimizer, _ = trainer.make_optimizer(unmix)
            seconds[name].append(timed(lambda: trainer.train_epoch(unmix, optimizer, 1)))  # noqa: B023
    for _ in range(5 * repeats):
        for name, trainer in trainers.items():
            loading[name].append(timed(lambda: list(trainer.train_loader(1))))  # noqa: B023
    rate = {name: samples / statistics.median(times) for name, times in seconds.items()}
    ratio, loading_ratio = (
        statistics.median(a / b for a, b in zip(times["musdb"], times["sourcefolder"], strict=True))
        for times in (seconds, loading)
    )
    loading_rate = {name: samples / statistics.median(times) for name, times in loading.items()}
    return {
        "hidden_size": config.hidden_size,
        "batch_size": config.batch_size,
        "samples_per_pass": samples,
        "musdb_samples_per_s": round(rate["musdb"], 3),
        "sourcefolder_samples_per_s": round(rate["sourcefolder"], 3),
        "ratio": round(ratio, 3),  # sourcefolder / musdb samples per second, median over pairs
        "within_10_percent": abs(ratio - 1.0) <= 0.10,
        "loading_samples_per_s": {name: round(value, 1) for name, value in loading_rate.items()},
        "loading_ratio": round(loading_ratio, 3),  # the same, of the loading alone
        "loading_share": {
            name: round(statistics.median(loading[name]) / statistics.median(seconds[name]), 3)
            for name in trainers
        },
        "raw_seconds": {"train": seconds, "loading": loading},
    }


def logging_overhead(config: TrainConfig, epochs: int, pairs: int) -> dict:
    """Epoch time of Trainer.fit with the per-epoch MLflow logging off, on, and on with MLflow's
    system metrics sampled every SYSTEM_METRICS_INTERVAL s (as `umx-tune train` runs), against a
    real server.

    Two readings each: the difference of median epoch times (noisy: the difference is small), and
    the time spent in the logging itself (direct): the training thread's logging call per epoch,
    and one sampling cycle of the system-metrics sampler as a share of its interval (the sampler
    takes that share of the process's time, whatever the epoch length).
    """
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import tempfile

    import mlflow
    from conftest import start_mlflow_server, stop_mlflow_server

    from umx_tune.pipeline import _epoch_metrics
    from umx_tune.tracking import SYSTEM_METRICS_INTERVAL
    from umx_tune.tracking.runs import RunTracker, start_run

    server = start_mlflow_server(Path(tempfile.mkdtemp(prefix="umx-bench-mlflow-")))
    os.environ["MLFLOW_TRACKING_URI"] = server.uri
    mlflow.set_tracking_uri(server.uri)
    try:
        data = open_dataset(config)
        seconds: dict[str, list[float]] = {"off": [], "on": [], "system": []}
        call_seconds: list[float] = []
        for mode in ("off", "on", "system") * pairs:
            trainer = Trainer(
                config.replace(epochs=epochs), data, torch.device("cpu"), Path(tempfile.mkdtemp()), False
            )
            if mode == "off":
                result = trainer.fit()
            else:
                with start_run(experiment="bench-logging", system_metrics=mode == "system") as tracker:

                    def log(epoch: EpochResult, tracker: RunTracker = tracker) -> None:
                        start = time.perf_counter()
                        tracker.log_metrics(_epoch_metrics(epoch), step=epoch.epoch)
                        call_seconds.append(time.perf_counter() - start)

                    result = trainer.fit(log)
            seconds[mode].extend(result.state.epoch_seconds)
        with start_run(experiment="bench-logging") as tracker:
            cycle = system_metrics_cycle(tracker.run_id)
    finally:
        stop_mlflow_server(server)
    off, on, system = (statistics.median(seconds[mode]) for mode in ("off", "on", "system"))
    call = statistics.median(call_seconds)
    return {
        "epochs_per_mode": len(seconds["on"]),
        "epoch_seconds_off": off,
        "epoch_seconds_on": on,
        "epoch_seconds_system_metrics": system,
        "overhead_pct": round(100 * (on - off) / off, 2),
        "logging_call_seconds": call,
        "logging_call_pct_of_epoch": round(100 * call / on, 3),
        "system_metrics_overhead_pct": round(100 * (system - on) / on, 2),
        "system_metrics_interval_s": SYSTEM_METRICS_INTERVAL,
        "system_metrics_cycle_seconds": cycle,
        "system_metrics_pct_of_epoch": round(100 * cycle / SYSTEM_METRICS_INTERVAL, 3),
    }


def system_metrics_cycle(run_id: str, cycles: int = 24) -> float:
    """Mean seconds of one sampling cycle of umx-tune's system-metrics sampler (tracking.system),
    run in this thread: sample every monitor and aggregate, plus its share of the batch it sends
    every SYSTEM_METRICS_SEND_EVERY samples (it asks the server nothing else)."""
    from mlflow.tracking import MlflowClient

    from umx_tune.tracking import SYSTEM_METRICS_SEND_EVERY
    from umx_tune.tracking.system import Sampler

    sampler = Sampler(run_id)
    client = MlflowClient()
    times, pending = [], []
    for step in range(cycles):
        start = time.perf_counter()
        sampler.collect_metrics()
        pending += sampler.sample()
        if (step + 1) % SYSTEM_METRICS_SEND_EVERY == 0:
            client.log_batch(run_id, metrics=pending)
            pending = []
        times.append(time.perf_counter() - start)
    # a send's cost spread over the cycles it covers, as the sampler spreads it
    return statistics.mean(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer batches, one repeat")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--logging-only", action="store_true", help="only MLflow's cost")
    parser.add_argument("--compare-sourcefolder", action="store_true", help="only sourcefolder against musdb")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    nb_batches, repeats = (2, 1) if args.quick else (4, 3)
    base = TrainConfig(device="cpu")
    report: dict[str, object] = {
        "threads": args.threads,
        "workers": base.nb_workers,
        "dataset": f"synthetic, {base.synth_tracks} train tracks x {base.synth_duration:g} s (WAV)",
        "load_average": os.getloadavg(),
    }
    if args.compare_sourcefolder:
        # the model is the same for both types: a smaller one leaves more pairs in the same time
        small = base.replace(hidden_size=256, batch_size=8)
        report["sourcefolder_vs_musdb"] = compare_sourcefolder(small, nb_batches, 2 * repeats + 1)
        report["load_average_after"] = os.getloadavg()
        print(json.dumps(report, indent=2))
        return
    if not args.logging_only:
        report["configs"] = [
            measure(base, nb_batches, repeats),
            measure(base.replace(hidden_size=256, batch_size=8), nb_batches, repeats),
        ]
    # MLflow prints "View run …" links on stdout when a run on a server ends: keep stdout pure JSON
    with contextlib.redirect_stdout(sys.stderr):
        small = base.replace(hidden_size=256, batch_size=8, samples_per_track=4)
        report["logging"] = logging_overhead(small, 3, 1 if args.quick else 3)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
