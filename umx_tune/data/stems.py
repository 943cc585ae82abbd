"""Decodes MUSDB18 `.stem.mp4` tracks once into a WAV cache, so training reads them like MUSDB18-HQ."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

import soundfile as sf

from umx_tune.config import SAMPLE_RATE
from umx_tune.data import STEM_ORDER
from umx_tune.errors import DatasetError
from umx_tune.paths import cache_root


def decoded_track_dir(stem_file: Path) -> Path:
    """A folder holding `<stem>.wav` for each stream of stem_file, decoded on first use."""
    stat = stem_file.stat()
    key = f"{stem_file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    folder = cache_root() / "decoded" / hashlib.sha256(key.encode()).hexdigest()[:20]
    if (folder / "mixture.wav").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    try:
        _decode_into(stem_file, tmp)
        try:
            tmp.rename(folder)
        except OSError:  # another process finished the same track first
            if not (folder / "mixture.wav").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _decode_into(stem_file: Path, out: Path) -> None:
    import stempeg

    try:
        audio, rate = stempeg.read_stems(str(stem_file), dtype="float32", sample_rate=SAMPLE_RATE)
    except Exception as err:  # stempeg surfaces ffmpeg failures as assorted exception types
        raise DatasetError(f"cannot decode stem file {stem_file}: {err}") from None
    # audio: (nb_stems, nb_samples, nb_channels)
    if audio.ndim != 3 or audio.shape[0] < len(STEM_ORDER):
        raise DatasetError(f"{stem_file} holds {audio.shape[0]} streams; MUSDB18 stems have 5")
    for index, stem in enumerate(STEM_ORDER):
        sf.write(out / f"{stem}.wav", audio[index], int(rate), subtype="FLOAT")
