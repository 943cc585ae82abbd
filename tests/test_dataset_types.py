"""Open-Unmix's dataset types on small stems written with soundfile: their splits, their chunks,
real-world files (mono, lengths, rates, missing or unreadable) and a training run end to end."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import optuna
import pytest
import soundfile as sf
import yaml
from conftest import TINY, assert_one_line_error, run_main
from mlflow.tracking import MlflowClient

from umx_tune.cli.options import option_name
from umx_tune.config import TARGETS, TrainConfig
from umx_tune.data.dataset import Track, TrainChunks, open_dataset
from umx_tune.data.mixing import Piece
from umx_tune.errors import ConfigError, DatasetError
from umx_tune.search import plans

INTERFERERS = ("drums", "bass", "other")


def _synth_splits(tiny_config: TrainConfig) -> dict[str, list[Track]]:
    data = open_dataset(tiny_config)
    return {"train": data.train, "valid": data.valid, "test": data.test}


def write_track_folders(tiny_config: TrainConfig, root: Path) -> Path:
    """root/<split>/<track>/<stem>.wav from the synthetic dataset: Open-Unmix's track-folder layout."""
    for split, tracks in _synth_splits(tiny_config).items():
        for track in tracks:
            folder = root / split / track.name
            folder.mkdir(parents=True)
            for stem in ("mixture", *TARGETS):
                shutil.copy(track.files[stem], folder / f"{stem}.wav")
    return root


def write_source_folders(tiny_config: TrainConfig, root: Path) -> Path:
    """root/<split>/<source>/<track>.wav: Open-Unmix's sourcefolder layout, from the same stems."""
    for split, tracks in _synth_splits(tiny_config).items():
        for track in tracks:
            for stem in ("vocals", *INTERFERERS):
                (root / split / stem).mkdir(parents=True, exist_ok=True)
                shutil.copy(track.files[stem], root / split / stem / f"{track.name}.wav")
    return root


TYPE_OPTIONS = {
    "aligned": {"input_file": "mixture.wav", "output_file": "vocals.wav"},
    "sourcefolder": {"target_dir": "vocals", "interferer_dirs": "drums bass,other", "nb_train_samples": 6},
    "trackfolder_fix": {"target_file": "vocals.wav", "interferer_files": "drums.wav,bass.wav,other.wav"},
    "trackfolder_var": {"target_file": "vocals.wav"},
}


def _config(tiny_config: TrainConfig, root: Path, kind: str, **extra: object) -> TrainConfig:
    return tiny_config.replace(dataset=kind, root=str(root), **{**TYPE_OPTIONS[kind], **extra})


@pytest.fixture(scope="module")
def track_root(tiny_config: TrainConfig, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_track_folders(tiny_config, tmp_path_factory.mktemp("tracks"))


@pytest.fixture(scope="module")
def source_root(tiny_config: TrainConfig, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_source_folders(tiny_config, tmp_path_factory.mktemp("sources"))


@pytest.mark.parametrize("kind", ["aligned", "trackfolder_fix", "trackfolder_var"])
def test_track_folder_types_have_open_unmix_split_sizes(
    kind: str, tiny_config: TrainConfig, track_root: Path
) -> None:
    config = _config(tiny_config, track_root, kind)
    data = open_dataset(config)
    assert (len(data.train), len(data.valid), len(data.test)) == (2, 1, 1)
    chunks = TrainChunks(data.train, config)
    assert len(chunks) == 2  # one chunk per track and epoch, as Open-Unmix's track-folder datasets
    x, y = chunks[1]
    assert x.shape == y.shape == (2, 44100)
    # the test track's references: the vocals and the other stems (aligned: the mixture minus vocals)
    track = data.test[0]
    vocals = sf.read(track_root / "test" / track.name / "vocals.wav", dtype="float32")[0].T
    np.testing.assert_array_equal(track.read("vocals"), vocals)
    mixture = sf.read(track_root / "test" / track.name / "mixture.wav", dtype="float32")[0].T
    np.testing.assert_allclose(track.read("mixture") - track.residual("vocals"), vocals, atol=1e-3)
    assert np.abs(track.read("mixture") - mixture).max() < 1e-3


def test_trackfolder_fix_mixes_one_excerpt_unless_random_track_mix(
    tiny_config: TrainConfig, track_root: Path
) -> None:
    config = _config(tiny_config, track_root, "trackfolder_fix", source_augmentations="none")
    chunks = TrainChunks(open_dataset(config).train, config)
    mix = chunks.mixer.draw(np.random.default_rng(0), 1)
    assert [p.path.name for p in mix.sources] == ["vocals.wav", "drums.wav", "bass.wav", "other.wav"]
    assert len({p.path.parent for p in mix.sources}) == 1 and len({p.start for p in mix.sources}) == 1
    assert mix.target == 0 and {p.gain for p in mix.sources} == {1.0}
    x, y = chunks[1]
    assert not np.array_equal(x, y)
    shuffled = TrainChunks(open_dataset(config).train, config.replace(random_track_mix=True))
    starts = {p.start for i in range(8) for p in shuffled.mixer.draw(np.random.default_rng(i), 0).sources}
    assert len(starts) > 1


def test_sourcefolder_splits_are_open_unmix_sample_counts(
    tiny_config: TrainConfig, source_root: Path
) -> None:
    config = _config(tiny_config, source_root, "sourcefolder", nb_valid_samples=3)
    data = open_dataset(config)
    chunks = TrainChunks(data.train, config)
    assert len(chunks) == 6 and len(data.valid) == 3 and len(data.test) == 1
    assert {t.nb_frames for t in data.valid} == {44100}
    assert data.valid == open_dataset(config).valid  # drawn by index: every epoch the same
    mix = chunks.mixer.draw(np.random.default_rng(3), 0)
    assert [p.path.parent.name for p in mix.sources] == ["drums", "bass", "other", "vocals"]
    assert mix.target == 3
    assert [s for s in data.test[0].files] == ["drums", "bass", "other", "vocals"]


def test_trackfolder_var_sums_every_file_and_silences_a_missing_target(
    tiny_config: TrainConfig, track_root: Path, tmp_path: Path
) -> None:
    root = tmp_path / "var"
    shutil.copytree(track_root, root)
    no_vocals = sorted((root / "train").iterdir())[0]
    (no_vocals / "vocals.wav").unlink()
    config = _config(tiny_config, root, "trackfolder_var")
    data = open_dataset(config)
    assert [t.name for t in data.train] == [sorted((root / "train").iterdir())[1].name]  # left out
    assert set(data.test[0].sources) == {"vocals", "drums.wav", "bass.wav", "other.wav"}  # not mixture.wav
    silenced = open_dataset(config.replace(silence_missing=True))
    assert len(silenced.train) == 2
    track = next(t for t in silenced.train if t.name == no_vocals.name)
    assert not track.read("vocals").any()
    chunks = TrainChunks(silenced.train, config.replace(silence_missing=True))
    assert chunks.mixer.draw(np.random.default_rng(0), 0).target is None


def test_mono_stems_are_duplicated_and_lengths_cut_to_the_shortest(
    tiny_config: TrainConfig, track_root: Path, tmp_path: Path
) -> None:
    root = tmp_path / "mixed"
    shutil.copytree(track_root, root)
    folder = sorted((root / "test").iterdir())[0]
    drums, rate = sf.read(folder / "drums.wav", dtype="float32")
    sf.write(folder / "drums.wav", drums[:, 0], rate, subtype="FLOAT")  # mono
    bass, _ = sf.read(folder / "bass.wav", dtype="float32")
    sf.write(folder / "bass.wav", bass[:-1000], rate, subtype="FLOAT")  # 1000 samples shorter
    track = open_dataset(_config(tiny_config, root, "trackfolder_fix")).test[0]
    assert track.nb_frames == len(bass) - 1000
    mono = track.read("drums.wav")
    assert mono.shape == (2, track.nb_frames) and np.array_equal(mono[0], mono[1])
    np.testing.assert_array_equal(mono[0], drums[: track.nb_frames, 0])
    assert track.read("mixture").shape == (2, track.nb_frames)


def test_source_augmentations(tiny_config: TrainConfig) -> None:
    tracks = open_dataset(tiny_config).train

    def drawn(augmentations: str) -> list[Piece]:
        chunks = TrainChunks(tracks, tiny_config.replace(source_augmentations=augmentations))
        return [p for i in range(8) for p in chunks.mixer.draw(np.random.default_rng(i), 0).sources]

    assert {(p.gain, p.swap) for p in drawn("none")} == {(1.0, False)}
    assert all(0.25 <= p.gain < 1.25 and not p.swap for p in drawn("gain"))
    both = drawn("channelswap gain")
    assert {p.swap for p in both} == {False, True} and len({p.gain for p in both}) == len(both)
    with pytest.raises(ConfigError, match="source_augmentations='gain,reverb' is not allowed"):
        tiny_config.replace(source_augmentations="gain,reverb")


def _categorical(choices: list[str]) -> dict:
    return {"type": "categorical", "choices": choices}


def test_source_augmentations_is_a_searchable_categorical(tmp_path: Path) -> None:
    space_file = tmp_path / "space.yaml"
    choices = ["gain,channelswap", "gain", "none"]
    space_file.write_text(yaml.safe_dump({"params": {"source_augmentations": _categorical(choices)}}))
    space = plans.load_space(str(space_file), TrainConfig())
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {space.config_for(study.ask(), TrainConfig()).source_augmentations for _ in range(12)}
    assert seen == set(choices)
    space_file.write_text(yaml.safe_dump({"params": {"source_augmentations": _categorical(["echo"])}}))
    with pytest.raises(ConfigError, match="source_augmentations='echo' is not allowed"):
        plans.load_space(str(space_file), TrainConfig())


def test_required_options_and_wrong_type_options_are_one_line_config_errors() -> None:
    cases = {
        "dataset=sourcefolder needs root": {"dataset": "sourcefolder"},
        "dataset=sourcefolder needs target_dir": {"dataset": "sourcefolder", "root": "/x"},
        "dataset=aligned needs input_file": {"dataset": "aligned", "root": "/x", "output_file": "vocals.wav"},
        "dataset=trackfolder_fix needs interferer_files": {
            "dataset": "trackfolder_fix", "root": "/x", "target_file": "vocals.wav"},
        "interferer_dirs is an option of dataset sourcefolder; dataset=musdb does not take it": {
            "root": "/x", "interferer_dirs": "bass"},
        "target_file='drums.wav' names the drums target, but target='vocals'": {
            "dataset": "trackfolder_var", "root": "/x", "target_file": "drums.wav"},
    }  # fmt: skip
    for message, values in cases.items():
        with pytest.raises(ConfigError, match=message):
            TrainConfig.from_dict(values)
    # a root alone is a MUSDB18 folder, as before dataset types
    assert TrainConfig(root="/x").dataset == "musdb"


def _args(config: dict) -> list[str]:
    return [arg for name, value in config.items() for arg in (option_name(name), str(value))]


def _runs(tracking_uri: str, experiment: str) -> list:
    found = MlflowClient(tracking_uri).get_experiment_by_name(experiment)
    return MlflowClient(tracking_uri).search_runs([found.experiment_id]) if found else []


def test_sourcefolder_trains_end_to_end(source_root: Path, tracking_uri: str, capsys) -> None:
    options = {**TINY, **TYPE_OPTIONS["sourcefolder"], "nb_train_samples": 8, "nb_valid_samples": 2}
    options.update({"dataset": "sourcefolder", "root": source_root, "lr": 0.01})
    result = run_main(capsys, "train", *_args(options), "--no-audio", "--no-system-metrics",
                      "--experiment", "sourcefolder", "--quiet", "--device", "cpu")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = _runs(tracking_uri, "sourcefolder")
    assert run.info.status == "FINISHED"
    assert run.data.params["dataset"] == "sourcefolder" and run.data.params["nb_train_samples"] == "8"
    losses = [m.value for m in MlflowClient(tracking_uri).get_metric_history(run.info.run_id, "train_loss")]
    assert len(losses) == 2 and losses[-1] < losses[0]
    assert np.isfinite(run.data.metrics["SDR"])
    assert run.inputs.dataset_inputs[0].dataset.name == source_root.name


def _break(root: Path, how: str) -> str:
    """Spoil a copy of a track-folder dataset; the fragment the error names."""
    track = sorted((root / "train").iterdir())[0]
    if how == "missing stem":
        (track / "bass.wav").unlink()
        return f"{track / 'bass.wav'} is missing"
    if how == "unreadable":
        (track / "bass.wav").write_bytes(b"RIFF not really")
        return f"corrupt or unreadable audio file {track / 'bass.wav'}"
    if how == "sample rate":
        audio, _ = sf.read(track / "bass.wav")
        sf.write(track / "bass.wav", audio, 48000)
        return f"{track / 'bass.wav'} has sample rate 48000 Hz"
    if how == "no test split":
        shutil.rmtree(root / "test")
        return f"dataset=trackfolder_fix: {root / 'test'} does not exist"
    raise AssertionError(how)


FIX = {**TINY, **TYPE_OPTIONS["trackfolder_fix"], "dataset": "trackfolder_fix"}


@pytest.mark.parametrize("how", ["missing stem", "unreadable", "sample rate", "no test split"])
def test_bad_folders_fail_the_run_in_one_line(
    how: str, track_root: Path, tracking_uri: str, tmp_path: Path, capsys
) -> None:
    root = tmp_path / "broken"
    shutil.copytree(track_root, root)
    message = _break(root, how)
    experiment = f"broken-{how.replace(' ', '-')}"
    result = run_main(capsys, "train", *_args({**FIX, "root": root}), "--experiment", experiment, "--quiet")
    assert_one_line_error(result, message)
    assert [r.info.status for r in _runs(tracking_uri, experiment)] in ([], ["FAILED"])


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"interferer_files": "drums.wav,piano.wav"}, "piano.wav is missing"),
        ({"dataset": "aligned", "output_file": "guitar.wav", "input_file": "mixture.wav",
          "target_file": "", "interferer_files": ""}, "has no file matching output_file='guitar.wav'"),
        ({"target_file": "", "interferer_files": ""}, "dataset=trackfolder_fix needs target_file"),
    ],
)  # fmt: skip
def test_named_files_and_options_missing(
    values: dict, message: str, track_root: Path, tracking_uri: str, capsys
) -> None:
    options = {k: v for k, v in {**FIX, "root": track_root, **values}.items() if v != ""}
    result = run_main(capsys, "train", *_args(options), "--experiment", "named-files", "--quiet")
    assert_one_line_error(result, message)
    assert not [r for r in _runs(tracking_uri, "named-files") if r.info.status == "RUNNING"]


def test_a_stem_of_another_sample_rate_is_named_when_listed(
    tiny_config: TrainConfig, source_root: Path, tmp_path: Path
) -> None:
    root = tmp_path / "rates"
    shutil.copytree(source_root, root)
    victim = sorted((root / "valid" / "drums").iterdir())[0]
    audio, _ = sf.read(victim)
    sf.write(victim, audio, 22050)
    with pytest.raises(DatasetError, match=f"{victim} has sample rate 22050 Hz"):
        open_dataset(_config(tiny_config, root, "sourcefolder"))
