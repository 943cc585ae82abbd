"""A run's listening excerpt: the first `listen_seconds` of one test track (the first, or
`listen_track`), as the mixture, the target's reference and the estimates of the target and the
residual.

The estimates are those the evaluation separated (`evaluate_tracks(keep=...)`), so the track is
not separated twice. An excerpt longer than its track is clipped to the whole track, and says so
(`clipped`, the run's tag, a warning); an unknown track is a ConfigError before anything trains.
Files are FLAC, 16-bit, which the MLflow UI plays: lossless and about 60% of a WAV's size.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf

from umx_tune import tracking
from umx_tune.config import SAMPLE_RATE, TrainConfig
from umx_tune.errors import ConfigError

if TYPE_CHECKING:  # the report reads Excerpts back without torch, which the dataset module imports
    from umx_tune.data.dataset import Track

SUBTYPE = "PCM_16"


@dataclass(frozen=True)
class Excerpt:
    """Which samples of which test track a run logs to listen to, and for which target."""

    track: str
    target: str  # the separated source: its reference and estimate are logged
    start: int  # first sample
    frames: int  # samples
    requested: float  # seconds asked for (listen_seconds); more than `seconds` when clipped

    @property
    def seconds(self) -> float:
        return self.frames / SAMPLE_RATE

    @property
    def clipped(self) -> bool:
        """The track was shorter than the seconds asked for: the excerpt is the whole track."""
        return self.frames < round(self.requested * SAMPLE_RATE)

    def cut(self, audio: np.ndarray) -> np.ndarray:
        """The excerpt of audio (nb_samples, nb_channels), as `separate` returns estimates."""
        return audio[self.start : self.start + self.frames]

    def to_tag(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_tag(cls, text: str | None) -> Excerpt | None:
        """The excerpt a run's tag records; None when absent or unreadable."""
        try:
            values = json.loads(text or "")
            return cls(
                track=str(values["track"]),
                target=str(values["target"]),
                start=int(values["start"]),
                frames=int(values["frames"]),
                requested=float(values["requested"]),
            )
        except (ValueError, KeyError, TypeError):
            return None

    def same_audio(self, other: Excerpt) -> bool:
        """Both are the same samples of the same track and target (the same mixture and reference)."""
        return asdict(self) | {"requested": 0} == asdict(other) | {"requested": 0}

    def describe(self) -> str:
        return f"{self.seconds:.2f} s of {self.track} from {self.start / SAMPLE_RATE:.2f} s"


def choose(tracks: Sequence[Track], config: TrainConfig) -> Excerpt | None:
    """The config's excerpt of the test tracks, for its target (None with audio off); ConfigError
    for a listen_track that names none of them."""
    if not config.audio:
        return None
    by_name = {t.name: t for t in tracks}
    if config.listen_track and config.listen_track not in by_name:
        raise ConfigError(
            f"listen_track={config.listen_track!r} is not a test track; choose one of {', '.join(by_name)}"
        )
    track = by_name[config.listen_track] if config.listen_track else tracks[0]
    frames = min(round(config.listen_seconds * SAMPLE_RATE), track.nb_frames)
    return Excerpt(track.name, config.target, 0, frames, config.listen_seconds)


def clip_warning(excerpt: Excerpt) -> str:
    """What a clipped excerpt tells the user."""
    return (
        f"umx-tune: warning: listen_seconds={excerpt.requested:g} is longer than test track "
        f"{excerpt.track!r} ({excerpt.seconds:.2f} s); its excerpt is the whole track"
    )


def parts(excerpt: Excerpt, track: Track, estimates: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{artifact path: audio (nb_samples, nb_channels)}: the excerpt of the mixture, of the target's
    reference and of the estimates (`separate`'s names, already cut: the target and "residual", or a
    joint separator's targets)."""
    target = excerpt.target
    from umx_tune.separation.offline import RESIDUAL, residual_name  # torch: only where audio is separated

    def reference(stem: str) -> np.ndarray:
        return track.read(stem, excerpt.start, excerpt.frames).T  # (nb_channels, n) -> (n, nb_channels)

    return {
        tracking.excerpt_artifact(tracking.EXCERPT_MIXTURE): reference("mixture"),
        tracking.excerpt_artifact(tracking.EXCERPT_REFERENCE, target): reference(target),
        **{
            tracking.excerpt_artifact(
                tracking.EXCERPT_ESTIMATE, residual_name(target) if name == RESIDUAL else name
            ): audio
            for name, audio in estimates.items()
        },
    }


def write(audio: dict[str, np.ndarray], folder: Path) -> list[Path]:
    """Each part as a 16-bit FLAC file in folder, named as its artifact; samples beyond full scale
    are clipped to it (an estimate can overshoot the mixture's peak)."""
    written = []
    for artifact, samples in audio.items():
        path = folder / Path(artifact).name
        sf.write(path, np.clip(samples, -1.0, 1.0), SAMPLE_RATE, subtype=SUBTYPE)
        written.append(path)
    return written
