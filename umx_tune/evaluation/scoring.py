"""Separation of the test tracks and BSSEval v4 scoring, aggregated as in SiSEC 2018, with the
global SDR of the MDX/SDX challenges beside it.

Tracks are separated one after another in this process (the model uses torch's threads), and each
separated track is scored in a pool of worker processes while the next one is separated.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import museval
import numpy as np
import torch
import tqdm
from openunmix import model as umx_model

from umx_tune import tracking
from umx_tune.config import SAMPLE_RATE, TARGETS
from umx_tune.data.dataset import Track
from umx_tune.errors import EvaluationError
from umx_tune.evaluation import global_sdr
from umx_tune.evaluation.listen import Excerpt
from umx_tune.separation.offline import RESIDUAL, residual_name, separate

T = TypeVar("T")


# {track: {estimate: {metric: dB}}}: each track's scores, the median over its BSSEval frames
TrackScores = dict[str, dict[str, dict[str, float]]]


@dataclass
class EvaluationResult:
    """SiSEC aggregates {name: {metric: dB}} for the target and residual, each track's own scores,
    the time they took, and the estimates of the excerpt asked for (`separate`'s names, each
    (nb_samples, nb_channels); None without one)."""

    scores: dict[str, dict[str, float]]
    tracks: TrackScores
    seconds: float
    excerpt: dict[str, np.ndarray] | None = None


def evaluate_tracks(
    separator: umx_model.Separator,
    tracks: list[Track],
    scored: tuple[str, ...],
    out_dir: Path,
    *,
    device: torch.device,
    evaluator: str,
    workers: int,
    progress: bool = False,
    keep: Excerpt | None = None,
) -> EvaluationResult:
    """Separate every track and score the scored estimates (`score_track`); write one museval JSON
    per track into out_dir. The estimates of keep's excerpt (of one of tracks) are kept: the
    listening excerpt needs no second separation."""
    start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    kept = None
    with _scoring_pool(workers) as pool:
        jobs: list[Future[TrackResult]] = []
        for track in tqdm.tqdm(tracks, desc="separating", disable=not progress, leave=False):
            estimates = separate(separator, track.read("mixture"), device)
            if keep is not None and track.name == keep.track:
                kept = {name: keep.cut(audio).copy() for name, audio in estimates.items()}
            jobs.append(pool.submit(score_track, track, scored, estimates, evaluator))
        results = {track.name: job.result() for track, job in zip(tracks, jobs, strict=True)}
    track_jsons = {name: result.json for name, result in results.items()}
    for name, text in track_jsons.items():
        (out_dir / f"{name}.json").write_text(text)
    store = _eval_store(track_jsons)
    medians = aggregate(store)
    scores = {}  # in scored's order: the model's targets first
    for name in scored:  # beside SiSEC's medians, the challenges' mean over tracks
        mean = global_sdr.mean_over_tracks(result.global_sdr[name] for result in results.values())
        scores[name] = {**medians.get(name, {}), tracking.GLOBAL_SDR: mean}
    seconds = time.perf_counter() - start
    return EvaluationResult(require_defined(scores), per_track(store), seconds, excerpt=kept)


def with_targets_mean(result: EvaluationResult, targets: Iterable[str]) -> EvaluationResult:
    """result with one more estimate, tracking.TARGETS_MEAN: per metric the mean over targets, of
    the aggregates and of each track's scores (a track lacking a target's scores has no mean)."""
    names = list(targets)

    def mean(scores: dict[str, dict[str, float]]) -> dict[str, float]:
        if not all(name in scores for name in names):
            return {}
        metrics = set.intersection(*(set(scores[name]) for name in names))
        return {m: float(np.mean([scores[name][m] for name in names])) for m in sorted(metrics)}

    tracks = {}
    for track, scores in result.tracks.items():
        track_mean = mean(scores)
        tracks[track] = {**scores, tracking.TARGETS_MEAN: track_mean} if track_mean else scores
    return replace(
        result, scores={**result.scores, tracking.TARGETS_MEAN: mean(result.scores)}, tracks=tracks
    )


class _InlineExecutor(Executor):
    """Runs each job at submit time, in this process: no pool start-up for a single worker."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as err:  # handed to the caller through the future, as a pool would
            future.set_exception(err)
        return future


def _scoring_pool(workers: int) -> Executor:
    if workers <= 1:
        return _InlineExecutor()
    # spawn, not fork: forking a process that holds torch's threads can deadlock the child
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


@dataclass(frozen=True)
class TrackResult:
    """One track's scores: museval's TrackStore JSON (BSSEval v4 frames) and {estimate: global SDR}."""

    json: str
    global_sdr: dict[str, float]


def score_track(
    track: Track, scored: tuple[str, ...], estimates: dict[str, np.ndarray], evaluator: str
) -> TrackResult:
    """BSSEval v4 (all scored estimates jointly, as SiSEC 2018 scores a separator's four) and the
    global SDR of one track. scored names the model's targets, then the residual's name beside a
    single target ('accompaniment' for vocals); estimates as `separate` returns them."""
    from umx_tune.evaluation.bsseval import eval_track

    targets = [name for name in scored if name in TARGETS]
    references, named = {}, {}
    for name in scored:
        if name in targets:
            references[name], named[name] = track.read(name).T, estimates[name]
        else:
            assert len(targets) == 1 and name == residual_name(targets[0]), f"a residual of {targets}"
            references[name], named[name] = track.residual(targets[0]).T, estimates[RESIDUAL]
    store = eval_track(references, named, track.name, rate=SAMPLE_RATE, evaluator=evaluator)
    sdrs = {name: global_sdr.global_sdr(references[name], named[name]) for name in scored}
    return TrackResult(store.json, sdrs)


def _eval_store(track_jsons: dict[str, str]) -> museval.EvalStore:
    """museval's store of every track's frames (track_jsons: track name -> TrackStore JSON), with
    SiSEC 2018's aggregation: median over frames per track, then median over tracks."""
    store = museval.EvalStore(frames_agg="median", tracks_agg="median")
    for name, text in track_jsons.items():
        store.add_track(museval.json2df(json.loads(text), name))
    return store


def require_defined(scores: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """scores ({estimate: {metric: dB}}), or EvaluationError for one that is NaN or infinite (never
    logged): BSSEval scores no window where the reference or the estimate is silent, and a median
    over no window of any track is NaN."""
    for name, values in scores.items():
        for metric, value in values.items():
            if not np.isfinite(value):
                raise EvaluationError(
                    f"the {name} {metric} over the test tracks is {value}: no BSSEval window of any "
                    "track has both the reference and the estimate sounding; nothing is logged"
                )
    return scores


def aggregate(store: museval.EvalStore) -> dict[str, dict[str, float]]:
    """SiSEC 2018 aggregates {estimate: {metric: dB}}: median over frames per track, then over tracks."""
    result: dict[str, dict[str, float]] = {}
    for (name, metric), value in store.agg_frames_tracks_scores().items():
        result.setdefault(name, {})[metric] = float(value)
    return result


def per_track(store: museval.EvalStore) -> TrackScores:
    """Each track's scores (median over its frames); a track with no finite frame has none."""
    result: TrackScores = {}
    for (track, name, metric), value in store.agg_frames_scores().items():
        if np.isfinite(value):
            result.setdefault(track, {}).setdefault(name, {})[metric] = float(value)
    return result
