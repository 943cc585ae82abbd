"""Torch datasets over MUSDB-layout folders.

musdb lists the tracks and the train/valid/test split; the audio itself is read with soundfile,
because musdb reads every chunk through an ffmpeg subprocess, which is far too slow for training.
`.stem.mp4` tracks are decoded once into a WAV cache (umx_tune.data.stems) and then read the same way.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import Dataset

from umx_tune.config import SAMPLE_RATE, TARGETS, TrainConfig
from umx_tune.data import SETUP_FILE, STEMS
from umx_tune.errors import ConfigError, DatasetError


@dataclass(frozen=True)
class Track:
    """One track: a WAV file per stem (mixture and the four sources), all of one length."""

    name: str
    files: dict[str, Path]
    nb_frames: int

    @property
    def duration(self) -> float:
        return self.nb_frames / SAMPLE_RATE

    def read(self, stem: str, start: int = 0, frames: int = -1) -> np.ndarray:
        """Audio of one stem as float32, shape (nb_channels, nb_samples)."""
        path = self.files[stem]
        try:
            audio, _ = sf.read(path, start=start, frames=frames, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as err:
            raise DatasetError(f"cannot read {path}: {err}") from None
        if frames >= 0 and audio.shape[0] != frames:
            raise DatasetError(f"{path} is truncated: expected {frames} samples from {start}")
        return np.ascontiguousarray(audio.T)

    def residual(self, target: str) -> np.ndarray:
        """Sum of the sources other than target, shape (nb_channels, nb_samples)."""
        return np.sum([self.read(s) for s in TARGETS if s != target], axis=0)


@dataclass(frozen=True)
class DatasetSplits:
    """The tracks of one dataset, split as musdb splits them."""

    root: Path
    train: list[Track]
    valid: list[Track]
    test: list[Track]

    def digest(self, splits: tuple[str, ...] = ("train", "valid", "test")) -> str:
        """Fingerprint of the splits' track lists and file sizes (all splits: what MLflow logs as the
        input's digest; the test split alone: the evaluation protocol's test tracks)."""
        listing = {
            split: [(t.name, t.nb_frames, [t.files[s].stat().st_size for s in STEMS]) for t in tracks]
            for split, tracks in (("train", self.train), ("valid", self.valid), ("test", self.test))
            if split in splits
        }
        return hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]


def open_dataset(config: TrainConfig, *, progress: bool = False) -> DatasetSplits:
    """The dataset a config names: the synthetic one (built or cached) or a MUSDB18 folder."""
    is_wav = config.is_wav
    if config.root:
        root = Path(config.root).expanduser()
        if not root.is_dir():
            raise DatasetError(f"root={config.root!r} does not exist or is not a folder")
    else:
        is_wav = True
        from umx_tune.data.synth.lifecycle import ensure_synth_dataset

        root = ensure_synth_dataset(
            config.synth_tracks, config.synth_duration, config.synth_seed, progress=progress
        )
    splits = DatasetSplits(
        root=root,
        train=_list_tracks(root, is_wav, "train", "train"),
        valid=_list_tracks(root, is_wav, "train", "valid"),
        test=_list_tracks(root, is_wav, "test", None),
    )
    for name, tracks in (("train", splits.train), ("valid", splits.valid), ("test", splits.test)):
        if not tracks:
            raise DatasetError(f"root={str(root)!r} holds no MUSDB-layout tracks in its {name} split")
    return splits


def _list_tracks(root: Path, is_wav: bool, subset: str, split: str | None) -> list[Track]:
    """Tracks of one subset/split, listed by musdb, each checked readable and of one length."""
    import musdb

    setup = root / SETUP_FILE
    try:
        db = musdb.DB(
            root=str(root),
            is_wav=is_wav,
            subsets=subset,
            split=split,
            setup_file=str(setup) if setup.is_file() else None,
        )
    except (OSError, ValueError, KeyError) as err:
        raise DatasetError(f"root={str(root)!r} is not a MUSDB-layout folder: {err}") from None
    if is_wav:
        return [wav_track(Path(t.path).parent, t.name) for t in db.tracks]
    from umx_tune.data.stems import decoded_track_dir

    return [wav_track(decoded_track_dir(Path(t.path)), t.name) for t in db.tracks]


def wav_track(folder: Path, name: str) -> Track:
    """A Track of the stem WAVs in folder, each checked readable, at 44.1 kHz and of one length."""
    files = {stem: folder / f"{stem}.wav" for stem in STEMS}
    lengths = {}
    for stem, path in files.items():
        try:
            info = sf.info(str(path))
        except (sf.LibsndfileError, RuntimeError) as err:
            raise DatasetError(f"corrupt or unreadable WAV {path}: {err}") from None
        if info.samplerate != SAMPLE_RATE:
            raise DatasetError(f"{path} has sample rate {info.samplerate}; umx-tune needs {SAMPLE_RATE}")
        lengths[stem] = info.frames
    nb_frames = lengths["mixture"]
    for stem, frames in lengths.items():
        if frames != nb_frames:
            raise DatasetError(f"{files[stem]} is truncated: {frames} samples, the mixture has {nb_frames}")
    return Track(name=name, files=files, nb_frames=nb_frames)


class TrainChunks(Dataset):
    """Random training excerpts as in Open-Unmix's MUSDBDataset (split='train').

    Each of the four sources comes from a randomly chosen track (random track mix) at a random
    start, with random gain (0.25-1.25) and channel swap; the mixture is their sum. Randomness is
    drawn from a generator seeded by (seed, epoch, index), so every DataLoader worker draws its own
    chunks and the same seed gives the same batches for any worker count.
    """

    def __init__(self, tracks: list[Track], config: TrainConfig) -> None:
        shortest = min(t.duration for t in tracks)
        if config.seq_dur > shortest:
            raise ConfigError(
                f"seq_dur={config.seq_dur:g} s is longer than the shortest training track "
                f"({shortest:.2f} s); must be <= {shortest:.2f}"
            )
        self.tracks = tracks
        self.target = config.target
        self.seed = config.seed
        self.samples_per_track = config.samples_per_track
        self.chunk = int(round(config.seq_dur * SAMPLE_RATE))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random draws __getitem__ makes."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.tracks) * self.samples_per_track

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(mixture, target), each (nb_channels, nb_samples) float32."""
        rng = np.random.default_rng([self.seed, self.epoch, index])
        stems = []
        for source in TARGETS:
            track = self.tracks[rng.integers(len(self.tracks))]
            start = int(rng.uniform(0, track.nb_frames - self.chunk))
            audio = track.read(source, start, self.chunk) * np.float32(rng.uniform(0.25, 1.25))
            if audio.shape[0] == 2 and rng.random() < 0.5:
                audio = audio[::-1]
            stems.append(audio)
        mixture = np.sum(stems, axis=0)
        target = stems[TARGETS.index(self.target)]
        return torch.from_numpy(mixture), torch.from_numpy(np.ascontiguousarray(target))


class FullTracks(Dataset):
    """Whole tracks (mixture, target), each (nb_channels, nb_samples), for validation."""

    def __init__(self, tracks: list[Track], target: str) -> None:
        self.tracks = tracks
        self.target = target

    def __len__(self) -> int:
        return len(self.tracks)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        track = self.tracks[index]
        return torch.from_numpy(track.read("mixture")), torch.from_numpy(track.read(self.target))
