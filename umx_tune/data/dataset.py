"""Tracks, the fast audio loader and the torch datasets over them, for every dataset type.

A Track is a set of audio files read with soundfile (no process per chunk). musdb lists MUSDB-layout
tracks and their split, but reads every chunk through an ffmpeg subprocess, far too slow for
training; `.stem.mp4` tracks are decoded once into a WAV cache (umx_tune.data.stems) and then read
the same way. Open-Unmix's folder types are listed in umx_tune.data.folders; how each draws its
training chunks is in umx_tune.data.mixing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import Dataset

from umx_tune.config import SAMPLE_RATE, TrainConfig
from umx_tune.data import SETUP_FILE, STEMS
from umx_tune.data.mixing import Mixer, Piece, mixer_for
from umx_tune.errors import ConfigError, DatasetError

MIXTURE = STEMS[0]
CHANNELS = 2  # every source is read as stereo, as Open-Unmix's force_stereo makes it


@dataclass(frozen=True)
class Track:
    """One track: an audio file per stem, read over nb_frames (the shortest file's length).

    Stems are the target (keyed by config.target), the interferers and, where the dataset has one,
    the mixture file; without one the mixture is the sum of the sources. offsets: where a stem's
    excerpt starts in its file (sourcefolder's validation chunks); frames: each file's own length;
    silent: stems the track lacks and reads as silence (trackfolder_var --silence-missing).
    """

    name: str
    files: dict[str, Path]
    nb_frames: int
    offsets: dict[str, int] = field(default_factory=dict)
    frames: dict[str, int] = field(default_factory=dict)
    silent: tuple[str, ...] = ()

    @property
    def duration(self) -> float:
        return self.nb_frames / SAMPLE_RATE

    @property
    def sources(self) -> list[str]:
        """The stems summed into the mixture: all but the mixture file."""
        return [stem for stem in self.files if stem != MIXTURE]

    def piece(self, stem: str, start: int, gain: float = 1.0, swap: bool = False) -> Piece:
        """Where a stem's excerpt from start lies in its file."""
        return Piece(self.files[stem], self.offsets.get(stem, 0) + start, gain, swap)

    def read(self, stem: str, start: int = 0, frames: int = -1) -> np.ndarray:
        """Audio of one stem (or the mixture) from start, frames long (-1: to nb_frames) as float32,
        shape (2, nb_samples)."""
        frames = self.nb_frames - start if frames < 0 else frames
        if stem in self.files:
            return read_piece(self.piece(stem, start), frames)
        if stem in self.silent:
            return np.zeros((CHANNELS, frames), dtype=np.float32)
        if stem != MIXTURE:
            raise KeyError(stem)
        return np.sum([self.read(s, start, frames) for s in self.sources], axis=0)

    def residual(self, target: str) -> np.ndarray:
        """Sum of the sources other than target (the mixture minus target where the track has no
        other source: aligned), shape (2, nb_samples)."""
        others = [s for s in self.sources if s != target]
        if not others:
            return self.read(MIXTURE) - self.read(target)
        return np.sum([self.read(s) for s in others], axis=0)


def read_piece(piece: Piece, frames: int) -> np.ndarray:
    """frames samples of a piece, as float32 (2, frames): mono duplicated, channels beyond two
    dropped (Open-Unmix's force_stereo), then its gain and channel swap."""
    try:
        audio, _ = sf.read(piece.path, start=piece.start, frames=frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise DatasetError(f"cannot read {piece.path}: {err}") from None
    if audio.shape[0] != frames:
        raise DatasetError(f"{piece.path} is truncated: expected {frames} samples from {piece.start}")
    audio = audio.T[:CHANNELS] if audio.shape[1] > 1 else np.repeat(audio.T, CHANNELS, axis=0)
    if piece.gain != 1.0:
        audio = audio * np.float32(piece.gain)
    if piece.swap:
        audio = audio[::-1]
    return np.ascontiguousarray(audio)


def file_frames(path: Path) -> int:
    """The length of an audio file in samples, checked readable and at 44.1 kHz."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as err:
        raise DatasetError(f"corrupt or unreadable audio file {path}: {err}") from None
    if info.samplerate != SAMPLE_RATE:
        raise DatasetError(
            f"{path} has sample rate {info.samplerate} Hz; umx-tune trains at {SAMPLE_RATE} Hz (resample it)"
        )
    return int(info.frames)


@dataclass(frozen=True)
class DatasetSplits:
    """The tracks of one dataset, split in train, valid and test."""

    root: Path
    train: list[Track]
    valid: list[Track]
    test: list[Track]

    def digest(self, splits: tuple[str, ...] = ("train", "valid", "test")) -> str:
        """Fingerprint of the splits' track lists and file sizes (all splits: what MLflow logs as the
        input's digest; the test split alone: the evaluation protocol's test tracks)."""
        listing = {
            split: [_listing(t) for t in tracks]
            for split, tracks in (("train", self.train), ("valid", self.valid), ("test", self.test))
            if split in splits
        }
        return hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]


def _listing(track: Track) -> list:
    """What the digest knows of a track: MUSDB tracks as before dataset types (name, length, sizes),
    so the protocol of runs scored on them stays the same; other tracks add their stems and offsets."""
    sizes = [path.stat().st_size for path in track.files.values()]
    if list(track.files) == list(STEMS):
        return [track.name, track.nb_frames, sizes]
    return [track.name, track.nb_frames, sizes, list(track.files), track.offsets, list(track.silent)]


def open_dataset(config: TrainConfig, *, progress: bool = False) -> DatasetSplits:
    """The dataset a config names: the synthetic one (built or cached), a MUSDB18 folder or one of
    Open-Unmix's folder types under root."""
    if config.dataset == "synthetic":
        from umx_tune.data.synth.lifecycle import ensure_synth_dataset

        root = ensure_synth_dataset(
            config.synth_tracks, config.synth_duration, config.synth_seed, progress=progress
        )
        return _musdb_splits(root, is_wav=True)
    root = Path(config.root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"root={config.root!r} does not exist or is not a folder")
    if config.dataset == "musdb":
        return _musdb_splits(root, config.is_wav)
    from umx_tune.data.folders import folder_splits

    return folder_splits(root, config)


def _musdb_splits(root: Path, is_wav: bool) -> DatasetSplits:
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
    """A Track of the MUSDB stem WAVs in folder, each checked readable, at 44.1 kHz and of one length
    (musdb's tracks are; a shorter stem is a truncated file)."""
    files = {stem: folder / f"{stem}.wav" for stem in STEMS}
    lengths = {stem: file_frames(path) for stem, path in files.items()}
    nb_frames = lengths[MIXTURE]
    for stem, frames in lengths.items():
        if frames != nb_frames:
            raise DatasetError(f"{files[stem]} is truncated: {frames} samples, the mixture has {nb_frames}")
    return Track(name=name, files=files, nb_frames=nb_frames)


class TrainChunks(Dataset):
    """Random training excerpts, drawn as the dataset type does in Open-Unmix (umx_tune.data.mixing).

    Randomness is drawn from a generator seeded by (seed, epoch, index), so every DataLoader worker
    draws its own chunks and the same seed gives the same batches for any worker count.
    """

    def __init__(self, tracks: list[Track], config: TrainConfig) -> None:
        self.chunk = int(round(config.seq_dur * SAMPLE_RATE))
        self.mixer: Mixer = mixer_for(tracks, config, self.chunk)
        shortest = self.mixer.shortest() / SAMPLE_RATE
        if config.seq_dur > shortest:
            raise ConfigError(
                f"seq_dur={config.seq_dur:g} s is longer than the shortest training track "
                f"({shortest:.2f} s); must be <= {shortest:.2f}"
            )
        self.seed = config.seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random draws __getitem__ makes."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.mixer)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(mixture, target), each (2, nb_samples) float32."""
        mix = self.mixer.draw(np.random.default_rng([self.seed, self.epoch, index]), index)
        sources = [read_piece(piece, self.chunk) for piece in mix.sources]
        # aligned reads its input file; the other types sum the sources
        mixture = np.sum(sources, axis=0) if mix.mixture is None else read_piece(mix.mixture, self.chunk)
        target = np.zeros_like(mixture) if mix.target is None else sources[mix.target]
        return torch.from_numpy(mixture), torch.from_numpy(np.ascontiguousarray(target))


class FullTracks(Dataset):
    """Whole tracks (mixture, target), each (2, nb_samples), for validation."""

    def __init__(self, tracks: list[Track], target: str) -> None:
        self.tracks = tracks
        self.target = target

    def __len__(self) -> int:
        return len(self.tracks)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        track = self.tracks[index]
        return torch.from_numpy(track.read(MIXTURE)), torch.from_numpy(track.read(self.target))
