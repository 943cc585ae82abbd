"""Open-Unmix's model folder, both ways: `separator.json`, and per target `<target>.json` (its
training options under "args") and `<target>.pth` (the network's state dict).

It is what `openunmix.utils.load_separator(DIR, targets=[...])` and `umx --model DIR` load, what
umx-tune logs as a run's MLflow model and what `umx-tune export` writes. Weights are read with
`torch.load(weights_only=True)`, so reading a folder never runs pickled code. A network's shape is
read from its weights, not from the JSON: Open-Unmix's own loader ignores `unidirectional`, and a
folder written by Open-Unmix's scripts/train.py need not say `max_bin` or `nb_layers`.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from openunmix.model import OpenUnmix, Separator

from umx_tune.config import TARGETS
from umx_tune.errors import ModelError, first_line

SEPARATOR_FILE = "separator.json"
ARGS_KEY = "args"  # <target>.json: the training options, as Open-Unmix's scripts/train.py writes them
# what a folder without them (one Open-Unmix wrote) separates with: umx-tune's separator, which
# always yields a residual (Open-Unmix refuses Wiener EM on a single target without one)
SEPARATION_DEFAULTS = {"niter": 1, "residual": True, "wiener_win_len": 300, "softmask": False}

StateDict = dict[str, torch.Tensor]


def is_model_folder(folder: Path) -> bool:
    return (folder / SEPARATOR_FILE).is_file()


def unmix_shape(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The constructor arguments of the OpenUnmix whose state dict this is (hidden_size, nb_bins,
    nb_channels, max_bin, unidirectional, nb_layers); ModelError if it is not one."""
    try:
        hidden_size, fc1_inputs = state["fc1.weight"].shape  # (hidden, max_bin * channels)
        max_bin = state["input_mean"].shape[0]
        nb_channels = fc1_inputs // max_bin
        nb_bins = state["fc3.weight"].shape[0] // nb_channels  # (bins * channels, hidden)
    except (KeyError, ValueError, ZeroDivisionError):
        raise ModelError("the weights are not an Open-Unmix network's (fc1, fc3, input_mean)") from None
    return {
        "hidden_size": int(hidden_size),
        "nb_bins": int(nb_bins),
        "nb_channels": int(nb_channels),
        "max_bin": int(max_bin),
        "unidirectional": "lstm.weight_ih_l0_reverse" not in state,
        "nb_layers": sum(1 for key in state if key.startswith("lstm.weight_ih_l") and "reverse" not in key),
    }


def unmix_from_state(state: Mapping[str, torch.Tensor], device: torch.device) -> OpenUnmix:
    """The OpenUnmix of a state dict (weights, input mean/scale), on device, in eval mode."""
    unmix = OpenUnmix(**unmix_shape(state))
    try:
        unmix.load_state_dict(state)
    except RuntimeError as err:
        raise ModelError(f"the weights do not fit an Open-Unmix network: {first_line(err)}") from None
    return unmix.to(device).eval()


def write_model_folder(
    separator: Separator, folder: Path, args: Mapping[str, Mapping[str, Any]] | None = None
) -> None:
    """Write the separator's Open-Unmix folder into folder (created if absent).

    args: per target, its training options (e.g. TrainConfig.to_params()) for `<target>.json`; the
    shape keys Open-Unmix's loader reads (nfft, nhop, nb_channels, hidden_size) are the network's.
    """
    folder.mkdir(parents=True, exist_ok=True)
    stft = separator.stft
    nb_channels = 1 if separator.complexnorm.mono else 2
    conf = {
        "targets": list(separator.target_models),
        "sample_rate": float(separator.sample_rate),
        "nfft": int(stft.n_fft),
        "nhop": int(stft.n_hop),
        "nb_channels": nb_channels,
        **{key: getattr(separator, key) for key in SEPARATION_DEFAULTS},
    }
    _write_json(folder / SEPARATOR_FILE, conf)
    for target, unmix in separator.target_models.items():
        state = {key: value.detach().cpu() for key, value in unmix.state_dict().items()}
        shape = unmix_shape(state)
        options = {**(args or {}).get(target, {}), "target": target, "nfft": conf["nfft"]}
        options.update(nhop=conf["nhop"], nb_channels=shape["nb_channels"])
        options.update(hidden_size=shape["hidden_size"], unidirectional=shape["unidirectional"])
        _write_json(folder / f"{target}.json", {ARGS_KEY: options, "max_bin": shape["max_bin"]})
        torch.save(state, folder / f"{target}.pth")


def check_new_folder(out: Path) -> None:
    """ModelError unless out is absent or an empty folder (what publish_model_folder writes to)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ModelError(f"{out} already exists and is not an empty folder; give a new one")


def publish_model_folder(
    separator: Separator, out: Path, args: Mapping[str, Mapping[str, Any]] | None = None
) -> None:
    """write_model_folder into a temporary folder beside out, renamed to out when complete: no
    partial folder is ever mistaken for a model. out must be absent or empty (ModelError)."""
    check_new_folder(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    except OSError as err:
        raise ModelError(f"cannot write {out}: {first_line(err)}") from None
    try:
        write_model_folder(separator, tmp, args)
        os.replace(tmp, out)  # an empty out is replaced as a whole (rename(2) of a folder)
    except OSError as err:
        raise ModelError(f"cannot write {out}: {first_line(err)}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_model_folder(folder: Path, device: torch.device) -> Separator:
    """The Separator of an Open-Unmix folder (umx-tune's or Open-Unmix's own), frozen on device.

    Its targets are separator.json's "targets", or (a folder Open-Unmix wrote) every `<target>.json`
    beside a `<target>*.pth`; niter, residual, … default to SEPARATION_DEFAULTS.
    """
    conf = _read_json(folder / SEPARATOR_FILE)
    try:
        nfft, nhop, nb_channels = int(conf["nfft"]), int(conf["nhop"]), int(conf["nb_channels"])
        sample_rate = float(conf["sample_rate"])
    except (KeyError, TypeError, ValueError):
        raise ModelError(f"{folder / SEPARATOR_FILE} lacks nfft, nhop, nb_channels or sample_rate") from None
    targets = conf.get("targets") or folder_targets(folder)
    models = {target: unmix_from_state(_read_weights(folder, target), device) for target in targets}
    for target, unmix in models.items():
        if unmix.nb_output_bins != nfft // 2 + 1:
            raise ModelError(
                f"{folder}: {target} has {unmix.nb_output_bins} bins, separator.json's nfft={nfft} "
                f"gives {nfft // 2 + 1}"
            )
    options = {key: conf.get(key, default) for key, default in SEPARATION_DEFAULTS.items()}
    separator = Separator(
        target_models=models,
        sample_rate=sample_rate,
        n_fft=nfft,
        n_hop=nhop,
        nb_channels=nb_channels,
        **options,
    )
    separator.freeze()
    return separator.to(device)


def read_target_args(folder: Path) -> dict[str, dict[str, Any]]:
    """Per target of the folder, the training options its `<target>.json` holds ("args")."""
    targets = _read_json(folder / SEPARATOR_FILE).get("targets") or folder_targets(folder)
    return {target: dict(_read_json(folder / f"{target}.json").get(ARGS_KEY, {})) for target in targets}


def folder_targets(folder: Path) -> list[str]:
    """The targets of a folder Open-Unmix wrote: each `<name>.json` with a `<name>*.pth` beside it,
    musdb's four first; ModelError if there are none."""
    names = [p.stem for p in folder.glob("*.json") if p.name != SEPARATOR_FILE and _weights(folder, p.stem)]
    if not names:
        raise ModelError(f"{folder} holds no <target>.json with its <target>.pth")
    return sorted(names, key=lambda name: (TARGETS.index(name) if name in TARGETS else len(TARGETS), name))


def _weights(folder: Path, target: str) -> Path | None:
    """`<target>.pth`, else Open-Unmix's hub spelling `<target>-<sha256>.pth`."""
    exact = folder / f"{target}.pth"
    return exact if exact.is_file() else next(iter(sorted(folder.glob(f"{target}-*.pth"))), None)


def _read_weights(folder: Path, target: str) -> StateDict:
    path = _weights(folder, target)
    if path is None:
        raise ModelError(f"{folder} has no {target}.pth for target {target!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as err:
        raise ModelError(f"cannot read the weights {path} (a state dict): {first_line(err)}") from None
    if not isinstance(state, dict):
        raise ModelError(f"{path} holds a {type(state).__name__}, not a state dict")
    return state


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{path.parent} is not an Open-Unmix model folder: it has no {path.name}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelError(f"cannot read {path}: {first_line(err)}") from None
    if not isinstance(value, dict):
        raise ModelError(f"{path} holds no JSON object")
    return value


def _write_json(path: Path, value: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=4, sort_keys=True) + "\n")
