"""The synthetic MUSDB-layout dataset: layout, musdb readability, determinism, audio sanity,
atomic building and caching. Tiny datasets (1-3 training tracks of 1-2 s) keep this fast."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import musdb
import numpy as np
import pytest
import soundfile as sf

from umx_tune.config import SAMPLE_RATE as SR
from umx_tune.config import TARGETS
from umx_tune.data import SETUP_FILE, STEMS
from umx_tune.data.synth import lifecycle, music
from umx_tune.errors import DatasetError

PARAMS: dict[str, Any] = {"tracks": 2, "duration": 2.0, "seed": 0}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small dataset shared by the read-only tests: 2 train, 1 valid, 1 test track of 2 s."""
    return lifecycle.write_synth_dataset(tmp_path_factory.mktemp("synth") / "ds", **PARAMS)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("UMX_TUNE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def wav_files(root: Path) -> list[Path]:
    return sorted(root.glob("*/*/*.wav"))


def digests(root: Path) -> dict[str, str]:
    """sha256 of every file below `root`, by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def read_int16(path: Path) -> np.ndarray:
    audio, rate = sf.read(path, dtype="int16")
    assert rate == SR
    return audio


def band_fraction(audio: np.ndarray, low: float, high: float) -> float:
    """Fraction of the energy of `audio` (nb_samples, nb_channels) between low and high Hz."""
    power = np.abs(np.fft.rfft(audio.astype(float).mean(axis=1))) ** 2
    freqs = np.fft.rfftfreq(len(audio), 1 / SR)
    return float(power[(freqs >= low) & (freqs < high)].sum() / power.sum())


# -- API -------------------------------------------------------------------------------------


def test_split_sizes() -> None:
    assert lifecycle.split_sizes(1) == (1, 1, 1)
    assert lifecycle.split_sizes(2) == (2, 1, 1)
    assert lifecycle.split_sizes(8) == (8, 2, 2)
    assert lifecycle.split_sizes(12) == (12, 3, 3)


def test_cache_path_names_the_parameters(cache: Path) -> None:
    path = lifecycle.synth_cache_path(8, 20.0, 3)
    assert path.parent == cache / "synth"
    assert path.name == f"t8-d20-s3-v{lifecycle.GENERATOR_VERSION}"
    variants = [(8, 20.0, 3), (9, 20.0, 3), (8, 2.5, 3), (8, 20.0, 4), (8, 20.0000001, 3)]
    assert len({lifecycle.synth_cache_path(*p) for p in variants}) == len(variants)


@pytest.mark.parametrize("bad", [{"tracks": 0}, {"duration": 0.0}, {"duration": float("nan")}, {"seed": -1}])
def test_invalid_parameters_are_dataset_errors(tmp_path: Path, bad: dict[str, float]) -> None:
    with pytest.raises(DatasetError):
        lifecycle.write_synth_dataset(tmp_path / "ds", **{**PARAMS, **bad})
    assert list(tmp_path.iterdir()) == []


# -- Layout and musdb ------------------------------------------------------------------------


def test_layout_is_musdb18_hq(dataset: Path) -> None:
    assert sorted(p.name for p in dataset.iterdir()) == [
        lifecycle.COMPLETE_MARKER,
        SETUP_FILE,
        "test",
        "train",
    ]
    train = sorted(p.name for p in (dataset / "train").iterdir())
    assert train == ["synth-train-000", "synth-train-001", "synth-valid-000"]
    assert sorted(p.name for p in (dataset / "test").iterdir()) == ["synth-test-000"]
    for track in [*(dataset / "train").iterdir(), *(dataset / "test").iterdir()]:
        assert sorted(p.name for p in track.iterdir()) == sorted(f"{s}.wav" for s in STEMS)
    info = sf.info(str(dataset / "test" / "synth-test-000" / "mixture.wav"))
    assert (info.samplerate, info.channels, info.subtype, info.format) == (SR, 2, "PCM_16", "WAV")
    assert info.frames == round(PARAMS["duration"] * SR)
    assert lifecycle.is_complete(dataset)


def test_musdb_reads_the_splits(dataset: Path) -> None:
    def db(subset: str, split: str | None = None) -> musdb.DB:
        setup = str(dataset / SETUP_FILE)
        return musdb.DB(root=str(dataset), is_wav=True, subsets=subset, split=split, setup_file=setup)

    assert [t.name for t in db("train", "train")] == ["synth-train-000", "synth-train-001"]
    assert [t.name for t in db("train", "valid")] == ["synth-valid-000"]
    test = db("test")
    assert [t.name for t in test] == ["synth-test-000"]
    track = test[0]
    assert track.rate == SR
    assert set(track.targets) == {"vocals", "drums", "bass", "other", "accompaniment", "linear_mixture"}
    # Decoding goes through ffmpeg, one call per file: read two of them, not all.
    assert track.audio.shape == track.targets["vocals"].audio.shape == (round(PARAMS["duration"] * SR), 2)
    np.testing.assert_array_equal(track.audio, read_int16(Path(track.path)) / 32768.0)


# -- Determinism -----------------------------------------------------------------------------


def test_same_parameters_give_byte_identical_files(dataset: Path, tmp_path: Path) -> None:
    again = lifecycle.write_synth_dataset(tmp_path / "again", **PARAMS)
    assert digests(again) == digests(dataset)


def test_tracks_do_not_depend_on_the_track_count(dataset: Path, tmp_path: Path) -> None:
    # tracks=3 has one more training track; valid and test keep one track each.
    more = lifecycle.write_synth_dataset(tmp_path / "more", **{**PARAMS, "tracks": 3})
    mine = digests(more)
    shared = {k: v for k, v in digests(dataset).items() if k.endswith(".wav")}
    assert {k: mine[k] for k in shared} == shared
    assert "train/synth-train-002/mixture.wav" in mine


def test_another_seed_gives_other_audio(dataset: Path, tmp_path: Path) -> None:
    other = lifecycle.write_synth_dataset(tmp_path / "other", **{**PARAMS, "seed": 1})
    mine, theirs = digests(other), digests(dataset)
    assert all(mine[k] != theirs[k] for k in mine if k.endswith(".wav"))


# -- Audio -----------------------------------------------------------------------------------


def test_mixture_is_the_exact_sum_and_nothing_clips(dataset: Path) -> None:
    for track in {p.parent for p in wav_files(dataset)}:
        audio = {stem: read_int16(track / f"{stem}.wav") for stem in STEMS}
        total = sum(audio[s].astype(np.int32) for s in TARGETS)
        np.testing.assert_array_equal(audio["mixture"], total)
        for stem, samples in audio.items():
            # Scaled to at most 98 % of full scale, plus rounding: never at the int16 limits.
            assert np.abs(samples.astype(np.int32)).max() < 32200, (track, stem)


def test_sources_are_audible_stereo_and_in_their_bands(dataset: Path) -> None:
    for track in {p.parent for p in wav_files(dataset)}:
        audio = {stem: read_int16(track / f"{stem}.wav") for stem in STEMS}
        for stem, samples in audio.items():
            rms = np.sqrt(np.mean((samples / 32768.0) ** 2))
            assert 20 * np.log10(rms) > -40, (track, stem)
        assert band_fraction(audio["bass"], 0, 300) > 0.9
        assert band_fraction(audio["drums"], 0, 150) > 0.1  # kick
        assert band_fraction(audio["drums"], 5000, SR / 2) > 0.02  # hats and snare
        assert band_fraction(audio["other"], 100, 2000) > 0.8
        assert band_fraction(audio["vocals"], 150, 4000) > 0.9
        # Panning, stereo voices and reverb: the channels of the chords differ.
        other = audio["other"].astype(float)
        assert np.corrcoef(other[:, 0], other[:, 1])[0, 1] < 0.99


def vocal_f0(vocals: np.ndarray) -> tuple[float, float]:
    """(f0 in Hz, normalised autocorrelation at that period) of the loudest 2048-sample frame."""
    mono = vocals.astype(float).mean(axis=1)
    frames = np.lib.stride_tricks.sliding_window_view(mono, 2048)[::1024]
    frame = frames[np.argmax((frames**2).sum(axis=1))]
    frame = frame - frame.mean()
    corr = np.correlate(frame, frame, mode="full")[len(frame) - 1 :] / np.dot(frame, frame)
    low, high = SR // 1000, SR // 70  # lags of 1000 Hz .. 70 Hz
    lag = low + int(np.argmax(corr[low:high]))
    return SR / lag, float(corr[lag])


def test_vocals_sing_in_a_voice_range(dataset: Path) -> None:
    for path in dataset.glob("*/*/vocals.wav"):
        f0, periodicity = vocal_f0(read_int16(path))
        assert 100 < f0 < 900, path
        assert periodicity > 0.5, path  # clearly pitched, not noise


def test_a_longer_song_has_vocal_rests_and_overlapping_sources() -> None:
    stems = music.generate_track(np.random.default_rng(7), 12 * SR)
    hop = SR // 20  # 50 ms frames

    def frame_db(stem: str) -> np.ndarray:
        mono = stems[stem].astype(float).mean(axis=1)[: len(stems[stem]) // hop * hop]
        return 10 * np.log10(np.mean(mono.reshape(-1, hop) ** 2, axis=1) + 1e-3)

    levels = {stem: frame_db(stem) for stem in TARGETS}
    active = {stem: lv > lv.max() - 30 for stem, lv in levels.items()}
    assert 0.05 < 1 - active["vocals"].mean() < 0.7  # phrases with rests, mostly singing
    playing = np.sum([a for a in active.values()], axis=0)
    assert np.mean(playing >= 3) > 0.5  # most of the time at least three sources overlap


# -- Atomic building -------------------------------------------------------------------------


def test_is_complete_needs_the_marker_and_its_files(dataset: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(dataset, tmp_path / "copy"))
    assert lifecycle.is_complete(copy)
    some_wav = copy / "train" / "synth-train-001" / "bass.wav"
    some_wav.write_bytes(some_wav.read_bytes()[:-2])  # truncated file
    assert not lifecycle.is_complete(copy)
    some_wav.unlink()
    assert not lifecycle.is_complete(copy)
    shutil.copy(dataset / "train" / "synth-train-001" / "bass.wav", some_wav)
    assert lifecycle.is_complete(copy)
    (copy / lifecycle.COMPLETE_MARKER).unlink()
    assert not lifecycle.is_complete(copy)
    assert not lifecycle.is_complete(tmp_path / "missing")


@pytest.mark.parametrize(
    ("error", "raised"),
    [(OSError(28, "No space left on device"), DatasetError), (KeyboardInterrupt(), KeyboardInterrupt)],
)
def test_failure_mid_build_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException, raised: type[BaseException]
) -> None:
    real_write = lifecycle._write_wav
    written: list[Path] = []

    def failing_write(path: Path, audio: np.ndarray) -> dict[str, object]:
        if len(written) == 7:  # in the second track
            raise error
        written.append(path)
        return real_write(path, audio)

    monkeypatch.setattr(lifecycle, "_write_wav", failing_write)
    with pytest.raises(raised) as info:
        lifecycle.write_synth_dataset(tmp_path / "ds", **PARAMS)
    if raised is DatasetError:  # a user-facing one-liner naming the destination and the cause
        assert (
            str(info.value)
            == f"cannot write the synthetic dataset to {tmp_path / 'ds'}: No space left on device"
        )
    assert written and all(not p.exists() for p in written)
    assert list(tmp_path.iterdir()) == []  # neither `ds` nor its temporary sibling


def test_refuses_a_non_empty_destination(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="not empty") as info:
        lifecycle.write_synth_dataset(out, **PARAMS)
    assert str(out) in str(info.value) and "\n" not in str(info.value)
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_an_empty_destination_folder_is_filled(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ds"
    out.mkdir()
    params: dict[str, Any] = {"tracks": 1, "duration": 1.0, "seed": 0}
    assert lifecycle.write_synth_dataset(out, **params, progress=True) == out
    assert lifecycle.is_complete(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == sum(lifecycle.split_sizes(1)) and "synth-test-000" in lines[-1]


# -- Cache -----------------------------------------------------------------------------------

SMALL: dict[str, Any] = {"tracks": 1, "duration": 1.0, "seed": 0}


def test_cache_is_built_once(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = lifecycle.ensure_synth_dataset(**SMALL)
    assert path == lifecycle.synth_cache_path(**SMALL) and lifecycle.is_complete(path)
    stamps = {p: p.stat().st_mtime_ns for p in path.rglob("*")}

    def no_rebuild(*args: object, **kwargs: object) -> Path:
        raise AssertionError("the cached dataset was rebuilt")

    monkeypatch.setattr(lifecycle, "write_synth_dataset", no_rebuild)
    assert lifecycle.ensure_synth_dataset(**SMALL) == path
    assert {p: p.stat().st_mtime_ns for p in path.rglob("*")} == stamps
    assert [p.name for p in (cache / "synth").iterdir()] == [path.name]


def test_cache_replaces_an_incomplete_folder(cache: Path) -> None:
    path = lifecycle.synth_cache_path(**SMALL)
    (path / "train").mkdir(parents=True)
    (path / "train" / "junk.wav").write_bytes(b"half a file")
    assert lifecycle.ensure_synth_dataset(**SMALL) == path
    assert lifecycle.is_complete(path) and not (path / "train" / "junk.wav").exists()
    assert [p.name for p in (cache / "synth").iterdir()] == [path.name]


def test_cache_loser_of_a_race_uses_the_winners_copy(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another builder renames its copy into place while this one is still writing."""
    real_write_tree = lifecycle._write_tree
    path = lifecycle.synth_cache_path(**SMALL)

    def write_tree_then_lose(root: Path, **kwargs: object) -> None:
        real_write_tree(root, **kwargs)  # type: ignore[arg-type]
        if not path.exists():
            monkeypatch.setattr(lifecycle, "_write_tree", real_write_tree)
            lifecycle.write_synth_dataset(path, **SMALL)  # the winner

    monkeypatch.setattr(lifecycle, "_write_tree", write_tree_then_lose)
    winner_marker = path / lifecycle.COMPLETE_MARKER
    assert lifecycle.ensure_synth_dataset(**SMALL) == path
    assert lifecycle.is_complete(path) and winner_marker.exists()
    assert [p.name for p in (cache / "synth").iterdir()] == [path.name]  # loser's copy discarded


def test_cache_two_processes_at_once(cache: Path) -> None:
    # Each process also reports whether the module pulled in torch or mlflow (it must not).
    code = (
        "import sys; from umx_tune.data.synth import lifecycle; "
        "path = lifecycle.ensure_synth_dataset(tracks=1, duration=1.0, seed=5); "
        "print(path, 'torch' in sys.modules, 'mlflow' in sys.modules)"
    )
    env = {**os.environ, "UMX_TUNE_CACHE": str(cache)}
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    path = lifecycle.synth_cache_path(1, 1.0, 5)
    assert outputs == [[str(path), "False", "False"]] * 2
    assert lifecycle.is_complete(path)
    assert [p.name for p in (cache / "synth").iterdir()] == [path.name]
