"""The evaluation-protocol fingerprint: stable, sensitive to every field, round-tripped by tags."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import inspect
from typing import Any

import pytest

import umx_tune
from umx_tune.config import TrainConfig
from umx_tune.errors import ReportError
from umx_tune.evaluation.protocol import Protocol, check_same, protocol_for

FINGERPRINT_TAG, SUMMARY_TAG = "test.protocol", "test.protocol_summary"
FIXED = Protocol(
    evaluator="fast",
    bsseval="v4",
    window=44100,
    hop=44100,
    niter=1,
    residual=True,
    targets=("vocals", "accompaniment"),
    test_tracks="0123456789ab",
    sample_rate=44100,
    umx_tune="0.1.0",
    openunmix="1.3.0",
)
# another value for each field: each must change the fingerprint
CHANGED: dict[str, Any] = {
    "evaluator": "museval",
    "bsseval": "v3",
    "window": 22050,
    "hop": 22050,
    "niter": 0,
    "residual": False,
    "targets": ("vocals",),
    "test_tracks": "ba9876543210",
    "sample_rate": 48000,
    "umx_tune": "0.2.0",
    "openunmix": "1.3.1",
}


def tags(protocol: Protocol) -> dict[str, str]:
    return protocol.to_tags(FINGERPRINT_TAG, SUMMARY_TAG)


def test_fingerprint_is_pinned() -> None:
    # a change here re-labels every run already tagged: do it only with a new protocol field
    assert FIXED.fingerprint() == "e165eafeddc3"
    canonical = (
        '{"bsseval":"v4","evaluator":"fast","hop":44100,"niter":1,"openunmix":"1.3.0","residual":true,'
        '"sample_rate":44100,"targets":["vocals","accompaniment"],"test_tracks":"0123456789ab",'
        '"umx_tune":"0.1.0","window":44100}'
    )
    assert hashlib.sha256(canonical.encode()).hexdigest()[:12] == FIXED.fingerprint()


def test_every_field_changes_the_fingerprint() -> None:
    assert set(CHANGED) == {f.name for f in dataclasses.fields(Protocol)}
    prints = {dataclasses.replace(FIXED, **{name: value}).fingerprint() for name, value in CHANGED.items()}
    assert len(prints) == len(CHANGED) and FIXED.fingerprint() not in prints


def test_summary_is_one_readable_line() -> None:
    assert FIXED.summary() == (
        "evaluator=fast bsseval=v4 window=44100 hop=44100 niter=1 residual=true "
        "targets=vocals,accompaniment test_tracks=0123456789ab sample_rate=44100 umx_tune=0.1.0 "
        "openunmix=1.3.0"
    )


@pytest.mark.parametrize("name", sorted(CHANGED))
def test_tags_round_trip(name: str) -> None:
    protocol = dataclasses.replace(FIXED, **{name: CHANGED[name]})
    written = tags(protocol)
    assert written == {FINGERPRINT_TAG: protocol.fingerprint(), SUMMARY_TAG: protocol.summary()}
    # among a run's other tags
    assert Protocol.from_tags({**written, "mlflow.runName": "x"}, FINGERPRINT_TAG, SUMMARY_TAG) == protocol


def test_untagged_runs_have_no_protocol_and_broken_tags_are_errors() -> None:
    assert Protocol.from_tags({"mlflow.runName": "old"}, FINGERPRINT_TAG, SUMMARY_TAG) is None
    written = tags(FIXED)
    with pytest.raises(ReportError, match=f"lack {SUMMARY_TAG}"):
        Protocol.from_tags({FINGERPRINT_TAG: written[FINGERPRINT_TAG]}, FINGERPRINT_TAG, SUMMARY_TAG)
    edited = {**written, SUMMARY_TAG: written[SUMMARY_TAG].replace("niter=1", "niter=2")}
    with pytest.raises(ReportError, match="does not match its summary"):
        Protocol.from_tags(edited, FINGERPRINT_TAG, SUMMARY_TAG)
    broken = {
        "niter=1": "niter=one",
        "residual=true": "residual=yes",
        " hop=44100": "",
        "bsseval=v4": "bsseval=v4 seed=3",
    }
    for old, new in broken.items():
        summary = written[SUMMARY_TAG].replace(old, new)
        with pytest.raises(ReportError, match="protocol summary"):
            Protocol.from_tags({**written, SUMMARY_TAG: summary}, FINGERPRINT_TAG, SUMMARY_TAG)


def test_texts_that_would_not_read_back_are_refused() -> None:
    unreadable: dict[str, Any] = {"umx_tune": "0.1 dev", "targets": ("vocals,drums",), "evaluator": ""}
    for field, value in unreadable.items():
        with pytest.raises(ValueError, match="one word"):
            dataclasses.replace(FIXED, **{field: value})
    with pytest.raises(ValueError, match="at least one target"):
        dataclasses.replace(FIXED, targets=())


def test_differences_are_named_in_field_order() -> None:
    other = dataclasses.replace(FIXED, evaluator="museval", targets=("drums", "residual"))
    assert FIXED.differences(other) == [
        "evaluator: fast vs museval",
        "targets: vocals,accompaniment vs drums,residual",
    ]
    assert FIXED.differences(dataclasses.replace(FIXED)) == []


def test_check_same_names_the_first_run_and_difference() -> None:
    same = dataclasses.replace(FIXED)
    assert check_same({"a": FIXED, "b": same}) == FIXED
    mixed = {
        "a": FIXED,
        "b": same,
        "c": dataclasses.replace(FIXED, evaluator="museval", niter=0),
        "d": dataclasses.replace(FIXED, hop=1),
    }
    with pytest.raises(ReportError) as info:
        check_same(mixed)
    assert str(info.value) == (
        "runs 'a' and 'c' were scored differently: evaluator: fast vs museval (and 1 more); "
        "--allow-mixed-protocols compares them anyway"
    )
    with pytest.raises(ReportError, match="no runs"):
        check_same({})


def test_protocol_for_is_how_the_pipeline_scores() -> None:
    from umx_tune.evaluation.bsseval import eval_track
    from umx_tune.separation.model import build_separator

    protocol = protocol_for(TrainConfig(target="drums", evaluator="museval"), "feedface")
    scoring = inspect.signature(eval_track).parameters  # score_track leaves win and hop at these
    assert protocol.window == int(scoring["win"].default * protocol.sample_rate) == 44100
    assert protocol.hop == int(scoring["hop"].default * protocol.sample_rate)
    assert protocol.niter == inspect.signature(build_separator).parameters["niter"].default
    assert (protocol.evaluator, protocol.targets, protocol.test_tracks) == (
        "museval",
        ("drums", "residual"),
        "feedface",
    )
    assert (protocol.bsseval, protocol.residual, protocol.sample_rate) == ("v4", True, 44100)
    assert protocol.umx_tune == umx_tune.__version__
    assert protocol.openunmix == importlib.metadata.version("openunmix")
    vocals = protocol_for(TrainConfig(), "feedface", niter=0)
    assert (vocals.evaluator, vocals.targets, vocals.niter) == ("fast", ("vocals", "accompaniment"), 0)
