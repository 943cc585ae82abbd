"""`umx-tune export`: a model as the Open-Unmix model folder that Open-Unmix's own tools load."""

from __future__ import annotations

from pathlib import Path

import click

from umx_tune.cli.options import TRUST_MODEL


@click.command()
@click.argument("model_ref", metavar="MODEL")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="the folder to write; it must not exist or be empty",
)
@TRUST_MODEL
def export(model_ref: str, out: Path, trust_model: bool) -> None:
    """Write MODEL (a run id, model URI or folder) as an Open-Unmix model folder: separator.json, and per
    target <target>.json and <target>.pth (its state dict).

    `openunmix.utils.load_separator(OUT, targets=[...])` and `umx --model OUT` load it, except a
    unidirectional (causal) model, which Open-Unmix's loader builds bidirectional (README: Models).
    """
    import torch

    from umx_tune.separation.folder import check_new_folder, publish_model_folder
    from umx_tune.tracking.models import load_model

    check_new_folder(out)  # before any download
    loaded = load_model(model_ref, torch.device("cpu"), trust_model=trust_model)
    publish_model_folder(loaded.separator, out, loaded.args)
    targets = list(loaded.separator.target_models)
    click.echo(f"{out}: {loaded.source} as an Open-Unmix model folder ({', '.join(targets)})")
    click.echo(f"  umx --model {out} --targets {' '.join(targets)} --residual residual SONG.wav")
