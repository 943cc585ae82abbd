"""The evaluation protocol: how a run's scores were produced, as a short hash and a readable line.

Scores of runs are comparable only when they were produced the same way: the same BSSEval
implementation, windows, Wiener iterations, scored estimates, test tracks, sample rate and code
versions. A `Protocol` holds exactly that. Its tags are a fingerprint (sha256 of the canonical JSON,
as `TrainConfig.signature`) and a summary of `field=value` pairs, readable in the MLflow UI and
parsed back by `from_tags` (the fingerprint then checks the parse).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import umx_tune
from umx_tune.config import SAMPLE_RATE, TrainConfig
from umx_tune.errors import ReportError

BSSEVAL_VERSION = "v4"
# BSSEval window and hop in seconds: museval's 1 s, which score_track leaves eval_track at
WINDOW_SECONDS = 1.0
HOP_SECONDS = 1.0
NITER = 1  # Wiener EM iterations: build_separator's default, which the pipeline uses
_TEXT = re.compile(r"[^\s=,]+")  # a text value: one word of the summary, no '=' or ','


@dataclass(frozen=True)
class Protocol:
    """How a run's test scores were computed; every field changes the fingerprint."""

    evaluator: str  # BSSEval implementation: "fast" (umx-tune's exact one) or "museval"
    bsseval: str  # BSSEval version: "v4"
    window: int  # BSSEval window, samples
    hop: int  # BSSEval hop, samples
    niter: int  # Wiener EM iterations of the Separator (0: the networks' masks only)
    residual: bool  # a residual estimate (mixture minus the targets) is separated and scored
    targets: tuple[str, ...]  # the scored estimates, e.g. ("vocals", "accompaniment")
    test_tracks: str  # digest of the test tracks
    sample_rate: int  # Hz
    umx_tune: str  # umx-tune version
    openunmix: str  # openunmix version

    def __post_init__(self) -> None:
        # what to_tags writes, from_tags must read back: one word per text, no separators inside
        texts = [self.evaluator, self.bsseval, self.test_tracks, self.umx_tune, self.openunmix]
        for text in [*texts, *self.targets]:
            if not _TEXT.fullmatch(text):
                raise ValueError(f"protocol text {text!r} must be one word without '=' or ','")
        if not self.targets:
            raise ValueError("a protocol scores at least one target")

    def fingerprint(self) -> str:
        """Short stable hash of the canonical JSON of every field."""
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def summary(self) -> str:
        """One readable line, 'evaluator=fast bsseval=v4 window=44100 ...', in field order."""
        return " ".join(f"{name}={text}" for name, text in self._texts().items())

    def to_tags(self, fingerprint_tag: str, summary_tag: str) -> dict[str, str]:
        """MLflow tag values under the two given tag names."""
        return {fingerprint_tag: self.fingerprint(), summary_tag: self.summary()}

    @classmethod
    def from_tags(cls, tags: Mapping[str, str], fingerprint_tag: str, summary_tag: str) -> Protocol | None:
        """The protocol a run's tags record; None when it has neither tag (scored before protocols
        were recorded); ReportError when they are incomplete, malformed or disagree."""
        if fingerprint_tag not in tags and summary_tag not in tags:
            return None
        if fingerprint_tag not in tags or summary_tag not in tags:
            missing = fingerprint_tag if fingerprint_tag not in tags else summary_tag
            raise ReportError(f"the run's protocol tags lack {missing}")
        protocol = cls._parse(tags[summary_tag])
        if protocol.fingerprint() != tags[fingerprint_tag]:
            raise ReportError(
                f"the run's protocol fingerprint {tags[fingerprint_tag]} does not match its summary "
                f"(which hashes to {protocol.fingerprint()})"
            )
        return protocol

    def differences(self, other: Protocol) -> list[str]:
        """'evaluator: fast vs museval' for each field that differs, in field order."""
        mine, theirs = self._texts(), other._texts()
        return [f"{name}: {mine[name]} vs {theirs[name]}" for name in mine if mine[name] != theirs[name]]

    def _texts(self) -> dict[str, str]:
        return {f.name: _format(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def _parse(cls, summary: str) -> Protocol:
        pairs = dict(word.partition("=")[::2] for word in summary.split())
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(pairs) - set(names))
        missing = [name for name in names if name not in pairs]
        if unknown or missing:
            what = f"unknown {', '.join(unknown)}" if unknown else f"lacks {', '.join(missing)}"
            raise ReportError(f"the run's protocol summary {what}: {summary!r}")
        hints = typing.get_type_hints(cls)
        try:
            return cls(**{name: _PARSERS[hints[name]](pairs[name]) for name in names})
        except (KeyError, ValueError) as err:
            raise ReportError(f"the run's protocol summary is malformed: {summary!r}") from err


def protocol_for(
    config: TrainConfig, test_digest: str, *, niter: int = NITER, targets: tuple[str, ...] = ()
) -> Protocol:
    """The protocol by which the pipeline scores a model trained with config on the test tracks
    whose digest is given: config's evaluator and target, its residual, museval's windows. A
    separator of several targets (targets, e.g. `umx-tune compose`'s four) is scored on those
    jointly, without a residual, as SiSEC 2018 scores the four estimates of one separator."""
    from umx_tune.separation.offline import residual_name  # imports torch: only when scoring

    joint = len(targets) > 1

    return Protocol(
        evaluator=config.evaluator,
        bsseval=BSSEVAL_VERSION,
        window=int(WINDOW_SECONDS * SAMPLE_RATE),  # as eval_track converts seconds to samples
        hop=int(HOP_SECONDS * SAMPLE_RATE),
        niter=niter,
        residual=not joint,  # build_separator always separates the residual, and score_track scores it
        targets=targets if joint else (config.target, residual_name(config.target)),
        test_tracks=test_digest,
        sample_rate=SAMPLE_RATE,
        umx_tune=umx_tune.__version__,
        openunmix=importlib.metadata.version("openunmix"),
    )


def check_same(protocols: Mapping[str, Protocol]) -> Protocol:
    """The protocol all runs share ({run name: protocol}); else a ReportError naming the first
    run that differs from the first run, and its first difference."""
    if not protocols:
        raise ReportError("no runs to compare")
    (first, reference), *rest = protocols.items()
    for name, protocol in rest:
        found = reference.differences(protocol)
        if found:
            more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
            raise ReportError(
                f"runs {first!r} and {name!r} were scored differently: {found[0]}{more}; "
                "--allow-mixed-protocols compares them anyway"
            )
    return reference


def _format(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


def _parse_bool(text: str) -> bool:
    return {"true": True, "false": False}[text]


_PARSERS: dict[object, Callable[[str], Any]] = {
    str: str,
    int: int,
    bool: _parse_bool,
    tuple[str, ...]: lambda text: tuple(text.split(",")),
}
