"""Reading MUSDB-layout folders: splits, random chunks, corrupt files, and the .stem.mp4 path."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from umx_tune.config import TrainConfig
from umx_tune.data import STEMS
from umx_tune.data.dataset import TrainChunks, open_dataset
from umx_tune.errors import ConfigError, DatasetError


def test_synthetic_splits(tiny_config: TrainConfig, synth_root: Path) -> None:
    data = open_dataset(tiny_config)
    assert data.root == synth_root
    assert (len(data.train), len(data.valid), len(data.test)) == (2, 1, 1)
    assert not {t.name for t in data.valid} & {t.name for t in data.train}
    assert all(abs(t.duration - 2.0) < 1e-3 for t in data.train + data.valid + data.test)
    assert data.digest() == open_dataset(tiny_config).digest()


def _batches(config: TrainConfig, chunks: TrainChunks, workers: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    loader = DataLoader(chunks, batch_size=2, shuffle=True, num_workers=workers, generator=generator)
    return [x for x, _ in loader]


def test_chunks_are_the_same_for_any_worker_count_and_differ_between_samples(
    tiny_config: TrainConfig,
) -> None:
    config = tiny_config.replace(samples_per_track=4)
    chunks = TrainChunks(open_dataset(config).train, config)
    alone, with_workers = _batches(config, chunks, 0), _batches(config, chunks, 2)
    assert all(torch.equal(a, b) for a, b in zip(alone, with_workers, strict=True))
    samples = torch.cat(alone)
    # Open-Unmix's loader drew the same chunks in every worker; here all 8 samples differ
    distinct = {tuple(s[0, :64].tolist()) for s in samples}
    assert len(distinct) == len(samples) == 8


def test_chunks_change_with_epoch_and_mixture_is_sum_of_sources(tiny_config: TrainConfig) -> None:
    chunks = TrainChunks(open_dataset(tiny_config).train, tiny_config)
    x0, y0 = chunks[0]
    chunks.set_epoch(1)
    x1, _ = chunks[0]
    assert x0.shape == y0.shape == (2, 44100)
    assert not torch.equal(x0, x1)
    assert float(x0.abs().max()) > 0.0


def _copy_dataset(synth_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "copy"
    shutil.copytree(synth_root, root)
    return root


def test_truncated_wav_is_named(tiny_config: TrainConfig, synth_root: Path, tmp_path: Path) -> None:
    root = _copy_dataset(synth_root, tmp_path)
    victim = root / "test" / "synth-test-000" / "drums.wav"
    audio, rate = sf.read(victim)
    sf.write(victim, audio[: len(audio) // 2], rate)
    with pytest.raises(DatasetError, match=r"drums\.wav is truncated"):
        open_dataset(tiny_config.replace(root=str(root), is_wav=True))


def test_corrupt_wav_is_named(tiny_config: TrainConfig, synth_root: Path, tmp_path: Path) -> None:
    root = _copy_dataset(synth_root, tmp_path)
    victim = root / "train" / "synth-train-001" / "vocals.wav"
    victim.write_bytes(b"RIFF\x00\x00garbage" * 10)
    with pytest.raises(DatasetError, match=r"corrupt or unreadable audio file .*synth-train-001/vocals\.wav"):
        open_dataset(tiny_config.replace(root=str(root), is_wav=True))


def test_missing_and_empty_roots(tiny_config: TrainConfig, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        open_dataset(tiny_config.replace(root=str(tmp_path / "nope")))
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(DatasetError, match="holds no MUSDB-layout tracks"):
        open_dataset(tiny_config.replace(root=str(tmp_path / "empty"), is_wav=True))


def test_seq_dur_longer_than_shortest_track(tiny_config: TrainConfig, synth_root: Path) -> None:
    config = tiny_config.replace(root=str(synth_root), is_wav=True, seq_dur=3.0)
    with pytest.raises(
        ConfigError, match=r"seq_dur=3 s is longer than the shortest training track \(2.00 s\)"
    ):
        TrainChunks(open_dataset(config).train, config)


def write_stem_dataset(synth_root: Path, out: Path) -> Path:
    """MUSDB18 (.stem.mp4) layout made from the synthetic WAV stems with stempeg."""
    import stempeg

    order = ("mixture", "drums", "bass", "other", "vocals")
    for track_dir in sorted(synth_root.glob("*/*/")):
        stems = np.stack([sf.read(track_dir / f"{s}.wav", dtype="float32")[0] for s in order])
        target = out / track_dir.parent.name / f"{track_dir.name}.stem.mp4"
        target.parent.mkdir(parents=True, exist_ok=True)
        stempeg.write_stems(str(target), stems, sample_rate=44100, writer=stempeg.StreamsWriter())
    shutil.copy(synth_root / "setup.yaml", out / "setup.yaml")
    return out


@pytest.mark.slow
def test_stem_mp4_dataset_is_decoded_once_and_read_like_wav(
    tiny_config: TrainConfig, synth_root: Path, tmp_path: Path
) -> None:
    root = write_stem_dataset(synth_root, tmp_path / "stems")
    config = tiny_config.replace(root=str(root), is_wav=False)
    data = open_dataset(config)
    assert (len(data.train), len(data.valid), len(data.test)) == (2, 1, 1)
    track = data.test[0]
    assert set(track.files) == set(STEMS)
    decoded = track.read("vocals")
    original = sf.read(synth_root / "test" / track.name / "vocals.wav", dtype="float32")[0].T
    assert decoded.shape[0] == 2 and abs(decoded.shape[1] - original.shape[1]) < 4096
    # AAC is lossy: the decoded vocals correlate strongly with the original, they are not equal
    xcorr = scipy.signal.correlate(decoded[0], original[0], mode="full", method="fft")
    peak = float(np.max(np.abs(xcorr))) / float(np.linalg.norm(decoded[0]) * np.linalg.norm(original[0]))
    assert peak > 0.9
    mtime = track.files["mixture"].stat().st_mtime_ns
    assert open_dataset(config).test[0].files["mixture"].stat().st_mtime_ns == mtime
