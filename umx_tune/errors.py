"""Errors a user can cause. The CLI prints their one-line message and exits with status 2."""

from __future__ import annotations


class UmxTuneError(Exception):
    """Base class of every error a user can cause (bad input, missing data, unreachable server)."""

    exit_code = 2


class ConfigError(UmxTuneError):
    """A configuration value is outside what TrainConfig allows."""


class DatasetError(UmxTuneError):
    """A dataset folder is missing, incomplete or holds unreadable audio."""


class TrackingError(UmxTuneError):
    """The MLflow tracking server cannot be reached or refuses a request."""


class TrackingUnreachable(TrackingError):
    """The MLflow tracking server does not answer at all (down, restarting, or not there)."""


class ModelError(UmxTuneError):
    """A model URI, run id or checkpoint cannot be loaded or does not fit."""


class OfflineError(UmxTuneError):
    """Something needs the internet and the machine has none."""


class ReportError(UmxTuneError):
    """Nothing can be reported: the study, experiment or run does not exist or holds no runs."""


class EvaluationError(UmxTuneError, ValueError):
    """Audio that BSSEval cannot score: mismatched shapes, silent or non-finite signals."""


class StatisticsError(UmxTuneError, ValueError):
    """Scores that cannot be summarised or compared: none, non-finite, or unpaired where pairs are needed."""


def first_line(err: BaseException) -> str:
    """The first line of an error's message (its type's name when the message is empty).

    Also the `reason` of a URLError, whose own message wraps it.
    """
    reason = getattr(err, "reason", None)
    text = str(reason if isinstance(reason, BaseException | str) else err).strip()
    return text.splitlines()[0] if text else type(err).__name__
