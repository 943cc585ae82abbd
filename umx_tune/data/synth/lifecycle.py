"""The synthetic dataset's life cycle: where it is cached, building it atomically, knowing it is complete.

Layout written (read by `musdb.DB(root, is_wav=True, setup_file=SETUP_FILE)`)::

    <root>/setup.yaml                      musdb setup file naming the validation tracks
    <root>/train/<track>/{mixture,drums,bass,other,vocals}.wav    train and valid tracks
    <root>/test/<track>/...
    <root>/.umx-tune-complete.json         written last: parameters, sizes and digests

WAV files are 44.1 kHz stereo 16-bit PCM, the int16 audio of `music.generate_track`.

The same (tracks, duration, seed) gives byte-identical files: each track has its own numpy
generator seeded from (seed, split, track index), so a track does not depend on how many there
are. No torch or mlflow import here: this module must stay cheap to import.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import secrets
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import yaml

from umx_tune.config import SAMPLE_RATE, TARGETS
from umx_tune.data import SETUP_FILE, STEM_ORDER
from umx_tune.data.synth.music import generate_track
from umx_tune.errors import DatasetError
from umx_tune.paths import cache_root

# Bump whenever the generated audio (music.py) or this layout changes: it is part of the cache
# folder name.
GENERATOR_VERSION = 1
COMPLETE_MARKER = ".umx-tune-complete.json"
SPLITS = ("train", "valid", "test")


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def split_sizes(tracks: int) -> tuple[int, int, int]:
    """(train, valid, test) track counts: `tracks` training tracks plus a quarter each (>= 1)."""
    extra = max(1, round(tracks / 4))
    return tracks, extra, extra


def track_names(tracks: int) -> dict[str, list[str]]:
    """Track folder names per split (`train`, `valid`, `test`), e.g. `synth-valid-000`."""
    return {
        split: [f"synth-{split}-{i:03d}" for i in range(count)]
        for split, count in zip(SPLITS, split_sizes(tracks), strict=True)
    }


def synth_cache_path(tracks: int, duration: float, seed: int) -> Path:
    """Cache folder of the dataset with these parameters (the generator version is in the name)."""
    # Short `20` or `7.5` where that is exact; the full repr otherwise, so that durations that
    # differ in the 7th digit do not share a folder.
    short = f"{duration:g}"
    name = short if float(short) == duration else repr(float(duration))
    return cache_root() / "synth" / f"t{tracks}-d{name}-s{seed}-v{GENERATOR_VERSION}"


def is_complete(root: Path) -> bool:
    """True if `root` holds a finished dataset: a readable marker whose files all exist."""
    try:
        marker = json.loads((Path(root) / COMPLETE_MARKER).read_text())
        files = marker["files"]
        return all((Path(root) / rel).stat().st_size == entry["bytes"] for rel, entry in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        # Missing marker or file, a marker from something else, or a half-written one.
        return False


def write_synth_dataset(
    out: Path, *, tracks: int, duration: float, seed: int, progress: bool = False
) -> Path:
    """Build the dataset at `out` (which must not exist or be an empty folder) and return it.

    The folder is built in a temporary sibling and renamed into place once complete, so `out`
    either does not appear or is complete. Raises DatasetError if `out` is not empty or cannot
    be written.
    """
    out = Path(out)
    _check_params(tracks, duration, seed)
    if _is_non_empty(out):
        raise _DestinationTakenError(f"synthetic dataset destination is not empty: {out}")
    tmp = out.parent / f"{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        _write_tree(tmp, tracks=tracks, duration=duration, seed=seed, progress=progress)
        _rename_into_place(tmp, out)
    except BaseException as exc:
        # Also on KeyboardInterrupt: never leave a half-built folder behind.
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):  # unwritable folder, full disk: the user's to fix
            raise DatasetError(f"cannot write the synthetic dataset to {out}: {exc.strerror or exc}") from exc
        raise
    return out


def ensure_synth_dataset(tracks: int, duration: float, seed: int, *, progress: bool = False) -> Path:
    """The cached dataset for these parameters, built first if needed.

    Safe when several processes ask at once: each builds in its own temporary folder, the first
    rename wins and the others discard their copy and use the winner's.
    """
    path = synth_cache_path(tracks, duration, seed)
    if is_complete(path):
        return path
    # Re-check after exists(): a concurrent builder may have renamed its copy into place.
    if path.exists() and not is_complete(path):
        _discard(path)
    try:
        return write_synth_dataset(path, tracks=tracks, duration=duration, seed=seed, progress=progress)
    except _DestinationTakenError:
        if is_complete(path):
            return path
        raise


class _DestinationTakenError(DatasetError):
    """The destination folder is not empty (possibly filled by a concurrent builder)."""


# --------------------------------------------------------------------------------------------
# Folder building
# --------------------------------------------------------------------------------------------


def _check_params(tracks: int, duration: float, seed: int) -> None:
    if not isinstance(tracks, int) or tracks < 1:
        raise DatasetError(f"synthetic dataset needs tracks >= 1, got {tracks!r}")
    if not duration > 0 or not math.isfinite(duration):
        raise DatasetError(f"synthetic dataset needs a duration > 0 s, got {duration!r}")
    if not isinstance(seed, int) or seed < 0:
        raise DatasetError(f"synthetic dataset needs a seed >= 0, got {seed!r}")


def _is_non_empty(path: Path) -> bool:
    if not path.exists() and not path.is_symlink():
        return False
    return not path.is_dir() or any(path.iterdir())


def _rename_into_place(tmp: Path, out: Path) -> None:
    """Atomically move the finished `tmp` to `out`; `out` may only be absent or an empty folder."""
    try:
        # POSIX rename replaces an empty directory and fails on a non-empty one, which is how a
        # concurrent builder that got there first is detected.
        os.rename(tmp, out)
    except OSError as exc:
        if _is_non_empty(out):
            raise _DestinationTakenError(f"synthetic dataset destination is not empty: {out}") from exc
        raise


def _discard(path: Path) -> None:
    """Remove a folder that is not a complete dataset (renamed aside first, so it is atomic)."""
    aside = path.parent / f"{path.name}.discard-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return  # another process discarded it already
    if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        aside.unlink()


def _write_tree(root: Path, *, tracks: int, duration: float, seed: int, progress: bool) -> None:
    """Write every track, the musdb setup file and, last, the completion marker into `root`."""
    names = track_names(tracks)
    nb_samples = max(1, round(duration * SAMPLE_RATE))
    files: dict[str, dict[str, Any]] = {}
    total, done = sum(len(v) for v in names.values()), 0
    for split_index, split in enumerate(SPLITS):
        subset = "test" if split == "test" else "train"
        for track_index, name in enumerate(names[split]):
            started = time.perf_counter()
            rng = np.random.default_rng([seed, split_index, track_index])
            stems = generate_track(rng, nb_samples)
            for stem, audio in stems.items():
                rel = f"{subset}/{name}/{stem}.wav"
                files[rel] = _write_wav(root / rel, audio)
            done += 1
            if progress:
                took = time.perf_counter() - started
                print(f"synth: track {done}/{total} {split} {name} ({took:.2f} s)", file=sys.stderr)
    (root / SETUP_FILE).write_text(_setup_yaml(names["valid"]))
    files[SETUP_FILE] = _describe((root / SETUP_FILE).read_bytes())
    _write_marker(root, files, tracks=tracks, duration=duration, seed=seed)


def _write_wav(path: Path, audio: np.ndarray) -> dict[str, Any]:
    """Write int16 `audio` (nb_samples, nb_channels) as 16-bit PCM WAV; return size and digest."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    sf.write(buffer, audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    data = buffer.getvalue()
    path.write_bytes(data)
    return _describe(data)


def _describe(data: bytes) -> dict[str, Any]:
    # BLAKE2b (as `b2sum` prints it): twice as fast as SHA-256 on CPUs without SHA instructions.
    return {"bytes": len(data), "blake2b": hashlib.blake2b(data).hexdigest()}


def _setup_yaml(validation_tracks: Sequence[str]) -> str:
    """musdb setup file: the structure of musdb's own `mus.yaml`, with our validation tracks."""
    setup = {
        "sample_rate": float(SAMPLE_RATE),
        "sources": {name: f"{name}.wav" for name in TARGETS},
        "mixture": "mixture.wav",
        "stem_ids": {name: index for index, name in enumerate(STEM_ORDER)},
        "targets": {
            **{name: {name: 1} for name in TARGETS},
            "accompaniment": {"bass": 1, "drums": 1, "other": 1},
            "linear_mixture": {name: 1 for name in ("vocals", "bass", "drums", "other")},
        },
        "validation_tracks": list(validation_tracks),
    }
    header = "# musdb setup file written by umx_tune.data.synth (synthetic dataset)\n"
    return header + yaml.safe_dump(setup, sort_keys=False)


def _write_marker(
    root: Path, files: dict[str, dict[str, Any]], *, tracks: int, duration: float, seed: int
) -> None:
    digest = hashlib.blake2b()
    for rel in sorted(files):
        digest.update(f"{rel}\0{files[rel]['blake2b']}\n".encode())
    marker = {
        "generator": "umx_tune.data.synth",
        "generator_version": GENERATOR_VERSION,
        "tracks": tracks,
        "duration": duration,
        "seed": seed,
        "sample_rate": SAMPLE_RATE,
        "splits": track_names(tracks),
        "digest": digest.hexdigest(),
        "files": dict(sorted(files.items())),
    }
    (root / COMPLETE_MARKER).write_text(json.dumps(marker, indent=1) + "\n")
