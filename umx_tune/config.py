"""TrainConfig: every hyperparameter and data/runtime option of one umx-tune run.

This is the one place that spells each parameter's name, default, bounds and help text. The CLI
options, the MLproject parameters, the MLflow params and the Optuna search spaces are derived from it
or checked against it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import PurePath
from typing import Any

from umx_tune.errors import ConfigError

SAMPLE_RATE = 44100
TARGETS = ("vocals", "drums", "bass", "other")
DEVICES = ("auto", "cpu", "cuda")
EVALUATORS = ("fast", "museval")
# dataset types: the generated default, MUSDB18 folders and Open-Unmix's folder datasets (openunmix/data.py)
DATASETS = ("synthetic", "musdb", "aligned", "sourcefolder", "trackfolder_fix", "trackfolder_var")
# each type's own options, as Open-Unmix's load_datasets adds them; another type refuses them
DATASET_OPTIONS: dict[str, tuple[str, ...]] = {
    "synthetic": (),
    "musdb": ("is_wav",),
    "aligned": ("input_file", "output_file"),
    "sourcefolder": ("target_dir", "interferer_dirs", "ext", "nb_train_samples", "nb_valid_samples"),
    "trackfolder_fix": ("target_file", "interferer_files", "random_track_mix"),
    "trackfolder_var": ("target_file", "ext", "random_interferer_mix", "silence_missing"),
}
# the options Open-Unmix has no default for; the first names the target's file or folder
DATASET_REQUIRED: dict[str, tuple[str, ...]] = {
    "aligned": ("output_file", "input_file"),
    "sourcefolder": ("target_dir", "interferer_dirs"),
    "trackfolder_fix": ("target_file", "interferer_files"),
    "trackfolder_var": ("target_file",),
}
# what selects and reads a dataset (`umx-tune evaluate` takes these too)
DATASET_PARAMS = (
    "dataset",
    "root",
    *dict.fromkeys(name for names in DATASET_OPTIONS.values() for name in names),
    "synth_tracks",
    "synth_duration",
    "synth_seed",
)
# Open-Unmix's source augmentations (openunmix/data.py _augment_*), applied to each training source
AUGMENTATIONS = ("gain", "channelswap")
NO_AUGMENTATIONS = "none"
# weights of the streaming network (streaming_net): float32, or float16 (CPU) for half the bytes a frame reads
STREAM_PRECISIONS = ("float32", "float16")

# Parameters that change the network's shape or what it predicts: a checkpoint trained with one
# value cannot be resumed with another.
MODEL_SHAPING = ("target", "hidden_size", "unidirectional", "bandwidth", "nfft", "nhop", "nb_channels")

# Parameters that do not change results (the loss curve is the same for any worker count), left
# out of the run signature so that runs differing only in them are recognised as duplicates.
# The torch thread count changes losses by float32 rounding only (sums in another order: about 1e-7
# relative, tests/test_cores.py), so runs that differ in it are duplicates too.
# The listening excerpt (listen_*, audio) is logged after evaluation and changes no score either.
# Nor does sampling the machine (system_metrics).
RESULT_NEUTRAL = ("nb_workers", "threads", "listen_track", "listen_seconds", "audio", "system_metrics")


def _param(
    default: Any,
    help: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    choices: tuple[str, ...] | None = None,
) -> Any:
    """A dataclass field carrying its help text and bounds in metadata."""
    meta = {"help": help, "low": low, "high": high, "low_open": low_open, "choices": choices}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class TrainConfig:
    """One Open-Unmix training run. Defaults are Open-Unmix's, except the CPU-sized ones noted."""

    target: str = _param("vocals", "source to separate", choices=TARGETS)
    # Upper bounds on the sizes that grow memory (hidden_size, nfft, batch_size, seq_dur) and on the
    # counts that grow time (epochs, samples_per_track): a typo (--hidden-size 1000000000) is a
    # one-line error before any work, not an allocation that takes the machine down. Each is well
    # beyond what Open-Unmix uses (hidden 512 / 1024 for umxl, nfft 4096, batch 16, 6 s, 1000 epochs).
    batch_size: int = _param(16, "training batch size", low=1, high=1024)
    nb_workers: int = _param(
        0, "DataLoader worker processes (0 = load in the main process; capped at the run's threads)", low=0
    )
    # umx_tune/cores.py: several umx-tune processes on one machine share its cores
    threads: int = _param(
        0, "torch threads (0 = this machine's cores divided by the umx-tune processes sharing them)", low=0
    )
    hidden_size: int = _param(512, "hidden units of the LSTM and dense layers", low=1, high=4096)
    samples_per_track: int = _param(
        64, "random chunks drawn per training track per epoch", low=1, high=100_000
    )
    # Open-Unmix trains for 1000 epochs on a GPU; 4 epochs over the default synthetic dataset
    # (6 training tracks) keep the main job on 2 CPU cores under 10 minutes (see README).
    epochs: int = _param(4, "training epochs", low=1, high=100_000)
    seq_dur: float = _param(6.0, "training chunk length in seconds", low=0.0, high=600.0, low_open=True)
    lr: float = _param(0.001, "Adam learning rate", low=0.0, low_open=True)
    weight_decay: float = _param(1e-5, "Adam weight decay", low=0.0)
    lr_decay_patience: int = _param(80, "epochs without improvement before the lr is decayed", low=0)
    lr_decay_gamma: float = _param(0.3, "lr decay factor", low=0.0, high=1.0, low_open=True)
    patience: int = _param(140, "early stopping: epochs without validation improvement", low=1)
    # fine-tuning: the target's weights and input statistics come from this model, not from scratch
    init_model: str = _param(
        "", "start from this model's weights: a run id, runs:/…, models:/… or an Open-Unmix folder"
    )
    unidirectional: bool = _param(False, "causal (unidirectional) LSTM, for real-time use")
    bandwidth: float = _param(
        16000.0, "model bandwidth in Hz; higher bins pass through", low=0.0, low_open=True
    )
    nfft: int = _param(4096, "STFT size (a power of two)", low=16, high=65536)
    nhop: int = _param(1024, "STFT hop size", low=1)
    nb_channels: int = _param(2, "audio channels the model takes (1 = mono, 2 = stereo)", low=1, high=2)
    seed: int = _param(42, "random seed", low=0)
    device: str = _param("auto", "device to train on", choices=DEVICES)
    dataset: str = _param(
        "synthetic",
        "dataset type: the generated one, musdb, or Open-Unmix's folder types (README: Data)",
        choices=DATASETS,
    )
    # a root with the default dataset means musdb, as before dataset types (and as in Open-Unmix)
    root: str = _param("", "dataset folder (every type but synthetic; alone it means musdb)")
    is_wav: bool = _param(False, "musdb: the folder holds WAV files (MUSDB18-HQ layout)")
    input_file: str = _param("", "aligned: the input file in each track folder (a glob), e.g. mixture.wav")
    output_file: str = _param("", "aligned: the output file in each track folder (a glob), e.g. vocals.wav")
    target_dir: str = _param("", "sourcefolder: the target's folder in each split, e.g. vocals")
    interferer_dirs: str = _param("", "sourcefolder: the interferers' folders (comma or space list)")
    ext: str = _param(".wav", "sourcefolder, trackfolder_var: the audio files' extension")
    nb_train_samples: int = _param(1000, "sourcefolder: training mixtures per epoch", low=1)
    nb_valid_samples: int = _param(100, "sourcefolder: validation mixtures", low=1)
    target_file: str = _param("", "trackfolder_fix, trackfolder_var: the target's file, e.g. vocals.wav")
    interferer_files: str = _param("", "trackfolder_fix: the interferers' files (comma or space list)")
    random_track_mix: bool = _param(False, "trackfolder_fix: each interferer from a random track")
    random_interferer_mix: bool = _param(False, "trackfolder_var: the interferers from a random track")
    silence_missing: bool = _param(False, "trackfolder_var: a track without the target file has a silent one")
    source_augmentations: str = _param(
        "gain,channelswap", "training sources' augmentations: gain, channelswap (comma or space list) or none"
    )
    synth_tracks: int = _param(
        6, "synthetic dataset: training tracks (validation and test add a quarter each)", low=2
    )
    synth_duration: float = _param(20.0, "synthetic dataset: seconds per track", low=1.0)
    synth_seed: int = _param(0, "synthetic dataset: generator seed", low=0)
    # "fast" (bsseval.py) matches museval to 1e-6 dB at about a twelfth of its CPU time
    evaluator: str = _param("fast", "BSSEval v4 implementation", choices=EVALUATORS)
    # what a run logs to listen to (audio/): the excerpt's test track and length; the whole track
    # where it is shorter (umx_tune/evaluation/listen.py)
    listen_track: str = _param("", "test track whose excerpt the run logs as audio; empty = the first")
    listen_seconds: float = _param(
        15.0, "seconds of the excerpt (from the track's start)", low=0.0, low_open=True
    )
    audio: bool = _param(True, "log the listening excerpt and its spectrograms (--no-audio: skip)")
    # what a run cost (umx_tune/tracking/system.py): CPU, memory, disk, network, GPU every 10 s
    system_metrics: bool = _param(True, "log MLflow's system metrics (--no-system-metrics: none)")

    def __post_init__(self) -> None:
        if self.root and self.dataset == "synthetic":
            object.__setattr__(self, "dataset", "musdb")  # frozen; the param then says what is read
        for f in fields(self):
            _check_field(f, getattr(self, f.name))
        _check_relations(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, where: str = "") -> TrainConfig:
        """Build a config from a mapping of parameter names; unknown names and bad types raise."""
        return cls().replace(where=where, **values)

    def replace(self, *, where: str = "", **changes: Any) -> TrainConfig:
        """A copy with some values changed, each coerced to its parameter's type and checked."""
        prefix = f"{where}: " if where else ""
        coerced = {name: coerce(param_field(name, prefix), value, prefix) for name, value in changes.items()}
        try:
            return dataclasses.replace(self, **coerced)
        except ConfigError as err:
            raise ConfigError(f"{prefix}{err}") from None

    def to_params(self) -> dict[str, Any]:
        """The parameters as a flat dict, names as in MLproject and MLflow."""
        return dataclasses.asdict(self)

    def signature(self) -> str:
        """Short hash of every parameter that changes results (dora-style run signature)."""
        relevant = {k: v for k, v in self.to_params().items() if k not in RESULT_NEUTRAL}
        blob = json.dumps(relevant, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def model_shape_changes(self, other: TrainConfig) -> str:
        """'hidden_size=32 (checkpoint has 16), …' for each model-shaping change; '' if none."""
        return ", ".join(
            f"{k}={new!r} (checkpoint has {old!r})"
            for k, (old, new) in self.model_shape_differences(other).items()
        )

    def model_shape_differences(self, other: TrainConfig) -> dict[str, tuple[Any, Any]]:
        """Model-shaping parameters whose values differ between self and other."""
        return {
            name: (getattr(self, name), getattr(other, name))
            for name in MODEL_SHAPING
            if getattr(self, name) != getattr(other, name)
        }


def param_fields() -> tuple[dataclasses.Field, ...]:
    """The dataclass fields of TrainConfig, in declaration order."""
    return fields(TrainConfig)


def param_field(name: str, prefix: str = "") -> dataclasses.Field:
    """The TrainConfig field of a parameter name; ConfigError (prefix + message) for an unknown name."""
    known = {f.name: f for f in param_fields()}
    if name not in known:
        raise ConfigError(f"{prefix}unknown parameter {name!r}; allowed: {', '.join(known)}")
    return known[name]


def param_type(f: dataclasses.Field) -> str:
    """A TrainConfig field's type name: 'int', 'float', 'bool' or 'str'."""
    # `from __future__ import annotations` above makes every annotation a string
    return f.type if isinstance(f.type, str) else f.type.__name__


def coerce(f: dataclasses.Field, value: Any, prefix: str = "") -> Any:
    """Convert value (possibly a string from a CLI or file) to the field's type."""
    kind = param_type(f)
    try:
        if kind == "bool":
            return _to_bool(value)
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind == "str":
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{prefix}{f.name}={value!r} is not a valid {kind}") from None
    raise AssertionError(f"unsupported field type {kind}")


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", ""):
        return False
    raise ValueError(value)


def _check_field(f: dataclasses.Field, value: Any) -> None:
    meta = f.metadata
    if meta["choices"] is not None and value not in meta["choices"]:
        raise ConfigError(f"{f.name}={value!r} is not allowed; choose one of {', '.join(meta['choices'])}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{f.name}={value!r} must be a finite number")
    low, high = meta["low"], meta["high"]
    if low is not None and (value < low or (meta["low_open"] and value == low)):
        sign = ">" if meta["low_open"] else ">="
        raise ConfigError(f"{f.name}={value!r} is out of range; must be {sign} {low:g}")
    if high is not None and value > high:
        raise ConfigError(f"{f.name}={value!r} is out of range; must be <= {high:g}")


def _check_relations(cfg: TrainConfig) -> None:
    if cfg.nfft & (cfg.nfft - 1):
        raise ConfigError(f"nfft={cfg.nfft} must be a power of two (e.g. 1024, 2048, 4096)")
    if cfg.nhop >= cfg.nfft:  # Hann windows a hop of nfft apart leave gaps the inverse STFT cannot fill
        raise ConfigError(f"nhop={cfg.nhop} must be < nfft={cfg.nfft}: the STFT windows must overlap")
    if cfg.seq_dur * SAMPLE_RATE < cfg.nfft:  # a training chunk holds at least one STFT window
        raise ConfigError(
            f"seq_dur={cfg.seq_dur:g} s is shorter than one STFT window; "
            f"must be >= nfft / {SAMPLE_RATE} Hz = {cfg.nfft / SAMPLE_RATE:.3g} s"
        )
    nyquist = SAMPLE_RATE / 2
    if cfg.bandwidth > nyquist:
        raise ConfigError(f"bandwidth={cfg.bandwidth:g} Hz is above Nyquist; must be <= {nyquist:g} Hz")
    if cfg.dataset == "synthetic" and cfg.seq_dur > cfg.synth_duration:
        raise ConfigError(
            f"seq_dur={cfg.seq_dur:g} s is longer than the synthetic tracks; "
            f"must be <= synth_duration={cfg.synth_duration:g} s"
        )
    _check_dataset(cfg)
    augmentations(cfg.source_augmentations)


def list_param(value: str) -> tuple[str, ...]:
    """A list parameter's items: Open-Unmix takes `--interferer-dirs bass drums`, umx-tune one string,
    'bass drums' or 'bass,drums'."""
    return tuple(item for item in re.split(r"[,\s]+", value) if item)


def augmentations(value: str) -> frozenset[str]:
    """The augmentations a source_augmentations value names (none: the empty set)."""
    names = list_param(value)
    if names == (NO_AUGMENTATIONS,):
        return frozenset()
    if not names or not set(names) <= set(AUGMENTATIONS):
        allowed = ", ".join(AUGMENTATIONS)
        raise ConfigError(f"source_augmentations={value!r} is not allowed; a list of {allowed}, or none")
    return frozenset(names)


def _check_dataset(cfg: TrainConfig) -> None:
    """The dataset type's root and required options given, no other type's option, and the target
    they name (Open-Unmix's target is the target file's or folder's stem) the config's target."""
    kind, own = cfg.dataset, DATASET_OPTIONS[cfg.dataset]
    if kind != "synthetic" and not cfg.root:
        raise ConfigError(f"dataset={kind} needs root, the dataset folder")
    for f in param_fields():
        users = [name for name, options in DATASET_OPTIONS.items() if f.name in options]
        if users and f.name not in own and getattr(cfg, f.name) != f.default:
            types = ", ".join(users)
            raise ConfigError(f"{f.name} is an option of dataset {types}; dataset={kind} does not take it")
    required = DATASET_REQUIRED.get(kind, ())
    for name in required:
        if not list_param(getattr(cfg, name)):
            raise ConfigError(f"dataset={kind} needs {name}")
    if required:
        option, value = required[0], getattr(cfg, required[0])
        named = PurePath(value).stem
        if named in TARGETS and named != cfg.target:
            raise ConfigError(f"{option}={value!r} names the {named} target, but target={cfg.target!r}")
    if not cfg.ext.startswith("."):
        raise ConfigError(f"ext={cfg.ext!r} must start with a dot, e.g. .wav")
