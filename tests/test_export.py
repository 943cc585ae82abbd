"""`umx-tune export RUN --out DIR` writes what Open-Unmix loads: its Python loader and its `umx`
command separate with the folder as `umx-tune separate` does with the run; a causal model needs
the README's recipe (Open-Unmix's loader builds every local model bidirectional)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import VENV_BIN, assert_one_line_error, cli_env, run_main
from openunmix.model import OpenUnmix, Separator
from test_models import CONFIG, log_model, separated, tiny_unmix, write_mix

from umx_tune.separation.model import build_separator
from umx_tune.tracking.models import load_separator

QUANTUM = 1 / 32768  # `umx` writes 16-bit PCM


def read(path: Path) -> np.ndarray:
    """(channels, samples) float32."""
    return sf.read(path, dtype="float32")[0].T


def assert_close(ours: np.ndarray, theirs: np.ndarray, floor: float = 0.0) -> None:
    """Equal to 1e-5 of the peak (plus floor: a quantization step)."""
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5 * float(np.abs(theirs).max()) + floor)


def test_an_exported_run_separates_in_openunmix_as_in_umx_tune(
    tracking_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import openunmix.utils

    run_id = log_model(build_separator(CONFIG, tiny_unmix(7)), "test-export")
    out = tmp_path / "exported"
    result = run_main(capsys, "export", run_id, "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["separator.json", "vocals.json", "vocals.pth"]
    assert [p.name for p in tmp_path.iterdir()] == ["exported"]  # no partial folder left beside it
    mix = write_mix(tmp_path / "song.wav", seconds=1.0)
    result = run_main(capsys, "separate", "--model", run_id, str(mix), "--out", str(tmp_path / "ours"))
    assert result.returncode == 0, result.stderr
    ours = {name: read(tmp_path / "ours" / f"song_{name}.wav") for name in ("vocals", "accompaniment")}

    theirs = openunmix.utils.load_separator(str(out), targets=["vocals"], residual=True, niter=1)
    estimates = separated(theirs.eval(), torch.from_numpy(read(mix))[None])[0].numpy()
    assert_close(ours["vocals"], estimates[0])
    assert_close(ours["accompaniment"], estimates[1])
    assert_one_line_error(run_main(capsys, "export", run_id, "--out", str(out)), str(out), "not an empty")

    # `umx` reads and writes audio through torchaudio 2.11, that is through torchcodec (a dependency)
    umx = [str(VENV_BIN / "umx"), "--model", str(out), "--targets", "vocals", "--residual", "accompaniment"]
    done = subprocess.run(
        [*umx, "--outdir", str(tmp_path / "umx"), str(mix)], capture_output=True, text=True, env=cli_env()
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert_close(ours["vocals"], read(tmp_path / "umx" / "song" / "vocals.wav"), QUANTUM)
    assert_close(ours["accompaniment"], read(tmp_path / "umx" / "song" / "residual.wav"), QUANTUM)


def load_causal(folder: Path, target: str) -> Separator:
    """The README's recipe for a causal model in Open-Unmix (its loader passes no unidirectional)."""
    args = json.loads((folder / f"{target}.json").read_text())["args"]
    state = torch.load(folder / f"{target}.pth", weights_only=True)
    unmix = OpenUnmix(
        nb_bins=args["nfft"] // 2 + 1,
        nb_channels=args["nb_channels"],
        hidden_size=args["hidden_size"],
        max_bin=state["input_mean"].shape[0],
        unidirectional=args["unidirectional"],
    )
    unmix.load_state_dict(state)
    conf = json.loads((folder / "separator.json").read_text())
    return Separator(
        {target: unmix},
        niter=1,
        residual=True,
        sample_rate=conf["sample_rate"],
        n_fft=conf["nfft"],
        n_hop=conf["nhop"],
        nb_channels=conf["nb_channels"],
    ).eval()


def test_a_causal_model_needs_the_readme_recipe_in_openunmix(
    tracking_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import openunmix.utils

    causal = CONFIG.replace(unidirectional=True)
    run_id = log_model(build_separator(causal, tiny_unmix(8, unidirectional=True)), "test-export")
    out = tmp_path / "causal"
    assert run_main(capsys, "export", run_id, "--out", str(out)).returncode == 0
    with pytest.raises(RuntimeError, match="size mismatch for lstm"):
        openunmix.utils.load_separator(str(out), targets=["vocals"], residual=True, niter=1)
    mix = torch.from_numpy(read(write_mix(tmp_path / "song.wav")))[None]
    ours = load_separator(run_id, torch.device("cpu"))
    torch.testing.assert_close(separated(load_causal(out, "vocals"), mix), separated(ours, mix))
