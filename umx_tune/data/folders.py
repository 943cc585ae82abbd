"""Open-Unmix's folder datasets (openunmix/data.py): aligned, sourcefolder, trackfolder_fix and
trackfolder_var, listed into Tracks.

Each reads `root/train` and `root/valid` as Open-Unmix does; Open-Unmix has no test split, so
umx-tune evaluates on `root/test` in the same layout. Every file is checked readable and at 44.1 kHz
when listed; a track's files may differ in length (the track is as long as its shortest, Open-Unmix's
min_duration) and in channels (mono is duplicated, as force_stereo does).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from umx_tune.config import SAMPLE_RATE, TrainConfig, list_param
from umx_tune.data.dataset import MIXTURE, DatasetSplits, Track, file_frames
from umx_tune.data.mixing import SourceFolderMix
from umx_tune.errors import DatasetError

SPLITS = ("train", "valid", "test")


def folder_splits(root: Path, config: TrainConfig) -> DatasetSplits:
    """The train, valid and test tracks of an Open-Unmix folder dataset under root."""
    lister = _LISTERS[config.dataset]
    tracks = {split: lister(_split_folder(root, split, config.dataset), config, split) for split in SPLITS}
    return DatasetSplits(root=root, **tracks)


def _split_folder(root: Path, split: str, kind: str) -> Path:
    folder = root / split
    if not folder.is_dir():
        where = " (Open-Unmix has no test split: umx-tune evaluates on test/, laid out as train/)"
        raise DatasetError(f"dataset={kind}: {folder} does not exist{where if split == 'test' else ''}")
    return folder


def _track_folders(folder: Path, kind: str) -> list[Path]:
    found = sorted(path for path in folder.iterdir() if path.is_dir())
    if not found:
        raise DatasetError(f"dataset={kind}: {folder} holds no track folders")
    return found


def _track(name: str, files: dict[str, Path], silent: tuple[str, ...] = ()) -> Track:
    """A Track of files as long as the shortest of them."""
    frames = {stem: file_frames(path) for stem, path in files.items()}
    for stem, count in frames.items():
        if count == 0:
            raise DatasetError(f"{files[stem]} holds no audio")
    return Track(name=name, files=files, nb_frames=min(frames.values()), frames=frames, silent=silent)


def _aligned(folder: Path, config: TrainConfig, split: str) -> list[Track]:
    """Each track folder's input_file (the mixture) and output_file (the target); globs allowed."""

    def match(track: Path, option: str) -> Path:
        pattern = getattr(config, option)
        found = sorted(track.glob(pattern))
        if not found:
            raise DatasetError(f"{track} has no file matching {option}={pattern!r}")
        return found[0]

    return [
        _track(track.name, {MIXTURE: match(track, "input_file"), config.target: match(track, "output_file")})
        for track in _track_folders(folder, config.dataset)
    ]


def _fixed_sources(folder: Path, config: TrainConfig, split: str) -> list[Track]:
    """Each track folder's target_file and interferer_files, all of them required."""
    interferers = list_param(config.interferer_files)
    names = {config.target: config.target_file, **{name: name for name in interferers}}
    tracks = []
    for track in _track_folders(folder, config.dataset):
        files = {stem: track / name for stem, name in names.items()}
        missing = next((path for path in files.values() if not path.is_file()), None)
        if missing is not None:
            raise DatasetError(f"{missing} is missing (trackfolder_fix: target_file and interferer_files)")
        tracks.append(_track(track.name, files))
    return tracks


def _variable_sources(folder: Path, config: TrainConfig, split: str) -> list[Track]:
    """Each track folder's target_file and every other `*<ext>` file as its interferers (but a
    mixture file). A folder without the target is left out, as Open-Unmix leaves it out, or with
    silence_missing trains on a silent target; a test track needs its target to be scored."""
    tracks = []
    for track in _track_folders(folder, config.dataset):
        target = track / config.target_file
        sources = sorted(track.glob(f"*{config.ext}"))
        others = {p.name: p for p in sources if p != target and p.name != f"{MIXTURE}{config.ext}"}
        if target.is_file():
            tracks.append(_track(track.name, {config.target: target, **others}))
        elif others and config.silence_missing and split != "test":
            tracks.append(_track(track.name, others, silent=(config.target,)))
    if not tracks:
        raise DatasetError(f"dataset=trackfolder_var: no track folder in {folder} has {config.target_file}")
    return tracks


def _source_folders(folder: Path, config: TrainConfig, split: str) -> list[Track]:
    """The folders' files, paired: track i takes file i (cycling) of each folder. Training draws
    from the folders as Open-Unmix does (mixing.SourceFolderMix; its statistics read these pairs);
    validation is nb_valid_samples chunks drawn per index, the same every epoch, as Open-Unmix's;
    each test track is one target file with the interferers' files paired with it."""
    names = {**{name: name for name in list_param(config.interferer_dirs)}, config.target: config.target_dir}
    files = {}
    for stem, name in names.items():
        found = sorted((folder / name).glob(f"*{config.ext}"))
        if not found:
            raise DatasetError(f"dataset=sourcefolder: {folder / name} holds no *{config.ext} files")
        files[stem] = found
    count = len(files[config.target]) if split == "test" else max(len(paths) for paths in files.values())
    pairs = []
    for index in range(count):
        chosen = {stem: paths[index % len(paths)] for stem, paths in files.items()}
        pairs.append(_track(f"{index:04d}-{chosen[config.target].stem}", chosen))
    return _valid_chunks(pairs, config) if split == "valid" else pairs


def _valid_chunks(pairs: list[Track], config: TrainConfig) -> list[Track]:
    """nb_valid_samples chunks of seq_dur, unaugmented, drawn from generators seeded by their index
    (Open-Unmix seeds the validation draw by the index: every epoch sees the same chunks)."""
    chunk = int(round(config.seq_dur * SAMPLE_RATE))
    plain = config.replace(source_augmentations="none")
    mixer = SourceFolderMix(pairs, plain, chunk, config.nb_valid_samples)
    stems = list(mixer.files)
    chunks = []
    for index in range(config.nb_valid_samples):
        pieces = mixer.draw(np.random.default_rng(index), index).sources
        files = {stem: piece.path for stem, piece in zip(stems, pieces, strict=True)}
        offsets = {stem: piece.start for stem, piece in zip(stems, pieces, strict=True)}
        chunks.append(Track(name=f"valid-{index:04d}", files=files, nb_frames=chunk, offsets=offsets))
    return chunks


_LISTERS: dict[str, Callable[[Path, TrainConfig, str], list[Track]]] = {
    "aligned": _aligned,
    "sourcefolder": _source_folders,
    "trackfolder_fix": _fixed_sources,
    "trackfolder_var": _variable_sources,
}
