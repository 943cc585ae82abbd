"""How each dataset type draws a training chunk, with Open-Unmix's semantics (openunmix/data.py).

A mixer turns (random generator, index) into a Mix: which excerpt of which file each source is,
with its augmentation, and which source is the target. TrainChunks reads and sums them. Every random
draw comes from the generator it is given, in a fixed order, so a chunk depends only on the
generator's seed (seed, epoch, index), never on the worker that draws it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

import numpy as np

from umx_tune.config import SAMPLE_RATE, TARGETS, TrainConfig, augmentations
from umx_tune.errors import DatasetError

if TYPE_CHECKING:
    from umx_tune.data.dataset import Track

T = TypeVar("T")

# Open-Unmix's _augment_gain draws a gain in [0.25, 1.25)
GAIN_LOW, GAIN_HIGH = 0.25, 1.25


@dataclass(frozen=True)
class Piece:
    """An excerpt of one audio file: where it starts, its gain and whether its channels swap."""

    path: Path
    start: int
    gain: float = 1.0
    swap: bool = False


@dataclass(frozen=True)
class Mix:
    """One training example: the sources summed into the mixture and the target's index among them
    (None: a silent target); aligned reads its mixture file instead of a sum."""

    sources: tuple[Piece, ...]
    target: int | None
    mixture: Piece | None = None


@dataclass(frozen=True)
class Augmentations:
    """Open-Unmix's source augmentations (random gain, channel swap with p = 0.5)."""

    names: frozenset[str]

    def draw(self, rng: np.random.Generator) -> tuple[float, bool]:
        """(gain, swap) for one source, drawn in Open-Unmix's order: gain, then the swap."""
        gain = float(rng.uniform(GAIN_LOW, GAIN_HIGH)) if "gain" in self.names else 1.0
        swap = "channelswap" in self.names and bool(rng.random() < 0.5)
        return gain, swap


class Mixer(Protocol):
    def __len__(self) -> int:
        """Training chunks per epoch (Open-Unmix's dataset length)."""
        ...

    def draw(self, rng: np.random.Generator, index: int) -> Mix: ...

    def shortest(self) -> int:
        """Frames of the shortest excerpt source a chunk may be cut from."""
        ...


def _start(rng: np.random.Generator, frames: int, chunk: int) -> int:
    return int(rng.uniform(0, frames - chunk))


def _pick(rng: np.random.Generator, items: Sequence[T]) -> T:
    return items[int(rng.integers(len(items)))]


class RandomTrackMix:
    """MUSDBDataset(split='train', random_track_mix=True): samples_per_track chunks per track, each
    of the four sources from a random track at a random start."""

    def __init__(self, tracks: Sequence[Track], config: TrainConfig, chunk: int) -> None:
        self.tracks, self.chunk = tracks, chunk
        self.target = TARGETS.index(config.target)
        self.length = len(tracks) * config.samples_per_track
        self.augment = Augmentations(augmentations(config.source_augmentations))

    def __len__(self) -> int:
        return self.length

    def shortest(self) -> int:
        return min(t.nb_frames for t in self.tracks)

    def draw(self, rng: np.random.Generator, index: int) -> Mix:
        pieces = []
        for source in TARGETS:
            track = _pick(rng, self.tracks)
            start = _start(rng, track.nb_frames, self.chunk)
            pieces.append(track.piece(source, start, *self.augment.draw(rng)))
        return Mix(tuple(pieces), self.target)


class AlignedMix:
    """AlignedDataset(random_chunks=True): one chunk per track, input and output at one start (one
    augmentation for both, so that the output stays aligned with the input)."""

    def __init__(self, tracks: Sequence[Track], config: TrainConfig, chunk: int) -> None:
        self.tracks, self.chunk, self.target = tracks, chunk, config.target
        self.augment = Augmentations(augmentations(config.source_augmentations))

    def __len__(self) -> int:
        return len(self.tracks)

    def shortest(self) -> int:
        return min(t.nb_frames for t in self.tracks)

    def draw(self, rng: np.random.Generator, index: int) -> Mix:
        track = self.tracks[index]
        start = _start(rng, track.nb_frames, self.chunk)
        gain, swap = self.augment.draw(rng)
        mixture = track.piece("mixture", start, gain, swap)
        return Mix((track.piece(self.target, start, gain, swap),), 0, mixture)


class _ChunkPerTrack:
    """What Open-Unmix's track-folder datasets share: one chunk per track and epoch, its sources
    augmented; RANDOM_MIX names the config flag that draws the interferers from random tracks."""

    RANDOM_MIX = ""

    def __init__(self, tracks: Sequence[Track], config: TrainConfig, chunk: int) -> None:
        self.tracks, self.chunk, self.target = tracks, chunk, config.target
        self.random_mix = bool(getattr(config, self.RANDOM_MIX))
        self.augment = Augmentations(augmentations(config.source_augmentations))

    def __len__(self) -> int:
        return len(self.tracks)

    def shortest(self) -> int:
        return min(t.nb_frames for t in self.tracks)


class FixedSourcesMix(_ChunkPerTrack):
    """FixedSourcesTrackFolderDataset(random_chunks=True): one chunk per track, its target at a
    random start, each interferer from the same excerpt or, with random_track_mix, from a random
    track at a random start."""

    RANDOM_MIX = "random_track_mix"

    def draw(self, rng: np.random.Generator, index: int) -> Mix:
        track = self.tracks[index]
        start = _start(rng, track.nb_frames, self.chunk)
        pieces = [track.piece(self.target, start, *self.augment.draw(rng))]
        for source in track.sources:
            if source == self.target:
                continue
            other, other_start = track, start
            if self.random_mix:
                other = _pick(rng, self.tracks)
                other_start = _start(rng, other.nb_frames, self.chunk)
            pieces.append(other.piece(source, other_start, *self.augment.draw(rng)))
        return Mix(tuple(pieces), 0)


class VariableSourcesMix(_ChunkPerTrack):
    """VariableSourcesTrackFolderDataset(random_chunks=True): one chunk per track, its target at a
    random start (silence where the track has none), the interferers all other sources of the same
    track or, with random_interferer_mix, of a random track at a random start."""

    RANDOM_MIX = "random_interferer_mix"

    def draw(self, rng: np.random.Generator, index: int) -> Mix:
        track = self.tracks[index]
        start = _start(rng, track.nb_frames, self.chunk)
        other, other_start = track, start
        if self.random_mix:
            other = _pick(rng, self.tracks)
            other_start = _start(rng, other.nb_frames, self.chunk)
        pieces = [
            other.piece(s, other_start, *self.augment.draw(rng)) for s in other.sources if s != self.target
        ]
        if self.target not in track.files:
            return Mix(tuple(pieces), None)
        pieces.append(track.piece(self.target, start, *self.augment.draw(rng)))
        return Mix(tuple(pieces), len(pieces) - 1)


class SourceFolderMix:
    """SourceFolderDataset(random_chunks=True): nb_samples chunks, each source a random file of its
    folder at a random start, the target last. Only files longer than a chunk are drawn, as Open-Unmix
    lists only those."""

    def __init__(
        self, tracks: Sequence[Track], config: TrainConfig, chunk: int, nb_samples: int | None = None
    ) -> None:
        self.chunk = chunk
        self.length = config.nb_train_samples if nb_samples is None else nb_samples
        self.augment = Augmentations(augmentations(config.source_augmentations))
        # the tracks pair the folders' files (umx_tune.data.folders); each folder's files, once each
        stems = [s for s in tracks[0].files if s != config.target] + [config.target]
        pools: dict[str, dict[Path, int]] = {stem: {} for stem in stems}
        for track in tracks:
            for stem, path in track.files.items():
                if track.frames[stem] > chunk:
                    pools[stem][path] = track.frames[stem]
        for stem, pool in pools.items():
            if not pool:
                folder = tracks[0].files[stem].parent
                raise DatasetError(f"no file in {folder} is longer than seq_dur={chunk / SAMPLE_RATE:g} s")
        self.files = {stem: list(pool.items()) for stem, pool in pools.items()}

    def __len__(self) -> int:
        return self.length

    def shortest(self) -> int:
        return min(frames for files in self.files.values() for _, frames in files)

    def draw(self, rng: np.random.Generator, index: int) -> Mix:
        pieces = []
        for files in self.files.values():
            path, frames = _pick(rng, files)
            pieces.append(Piece(path, _start(rng, frames, self.chunk), *self.augment.draw(rng)))
        return Mix(tuple(pieces), len(pieces) - 1)


_MIXERS: dict[str, Callable[[Sequence[Track], TrainConfig, int], Mixer]] = {
    "synthetic": RandomTrackMix,
    "musdb": RandomTrackMix,
    "aligned": AlignedMix,
    "sourcefolder": SourceFolderMix,
    "trackfolder_fix": FixedSourcesMix,
    "trackfolder_var": VariableSourcesMix,
}


def mixer_for(tracks: Sequence[Track], config: TrainConfig, chunk: int) -> Mixer:
    """The mixer of config's dataset type over its training tracks."""
    return _MIXERS[config.dataset](tracks, config, chunk)
