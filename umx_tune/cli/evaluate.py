"""`umx-tune evaluate`: score an existing model on a dataset's test split, as a new MLflow run."""

from __future__ import annotations

from typing import Any

import click

from umx_tune import cores
from umx_tune.cli.options import (
    EXPERIMENT,
    MODEL_REFERENCE,
    QUIET,
    TRUST_MODEL,
    config_options,
    pop_config_values,
)
from umx_tune.config import DATASET_PARAMS, TrainConfig


@click.command()
@click.option("--model", "model_ref", default=None, help=MODEL_REFERENCE)
@TRUST_MODEL
@click.option(
    "--pretrained", default=None, help="Open-Unmix pretrained model instead (umxhq; needs internet)"
)
@config_options(
    only=(
        *("target", *DATASET_PARAMS, "evaluator", "device"),
        *("listen_track", "listen_seconds", "audio"),
        "system_metrics",
        "threads",
    )
)
@EXPERIMENT
@click.option("--run-name", default=None, help="MLflow run name [default: generated]")
@QUIET
def evaluate(
    model_ref: str | None,
    trust_model: bool,
    pretrained: str | None,
    experiment: str,
    run_name: str | None,
    quiet: bool,
    **values: Any,
) -> None:
    """Evaluate an existing model on the test split and log the scores as a new MLflow run."""
    if bool(model_ref) == bool(pretrained):
        raise click.UsageError("give exactly one of --model URI and --pretrained NAME")
    given = pop_config_values(values)
    # evaluation cuts no training chunks: keep the default seq_dur clear of short synthetic tracks
    given["seq_dur"] = min(TrainConfig().seq_dur, given.get("synth_duration", TrainConfig().synth_duration))
    config = TrainConfig.from_dict(given)
    cores.check_environment()

    from umx_tune import tracking
    from umx_tune.data.dataset import open_dataset
    from umx_tune.evaluation import listen
    from umx_tune.evaluation.protocol import protocol_for
    from umx_tune.pipeline import evaluate_and_log
    from umx_tune.report.summary import score_lines
    from umx_tune.separation.model import resolve_device
    from umx_tune.separation.pretrained import load_pretrained
    from umx_tune.tracking.models import load_model
    from umx_tune.tracking.runs import start_run

    device = resolve_device(config.device)
    if pretrained:
        separator = load_pretrained(pretrained, config.target, device)
        source = f"pretrained:{pretrained}"
    else:
        assert model_ref is not None
        loaded = load_model(model_ref, device, trust_model=trust_model)
        separator, source = loaded.separator, loaded.source
    target = next(iter(separator.target_models))
    data = open_dataset(config.replace(target=target), progress=not quiet)  # its target's files
    # of the model's own target; an unknown listen_track fails before the run starts
    excerpt = listen.choose(data.test, config.replace(target=target))
    name = run_name or f"evaluate {source}"
    with (
        cores.sharing(config.threads, 0, None if quiet else cores.print_waiting) as share,
        start_run(experiment=experiment, run_name=name, system_metrics=config.system_metrics) as tracker,
    ):
        tracker.set_tags({tracking.TAG_EVALUATED_MODEL: source, tracking.TAG_KIND: tracking.KIND_EVALUATION})
        tracker.log_dataset(data.root, data.digest(), name=data.root.name)
        # scored as the model separates: its own targets and Wiener iterations
        protocol = protocol_for(
            config.replace(target=target),
            data.digest(splits=("test",)),
            niter=separator.niter,
            targets=tuple(separator.target_models),  # a composition's four, jointly
        )
        result = evaluate_and_log(
            separator,
            data.test,
            protocol,
            device=device,
            tracker=tracker,
            progress=not quiet,
            excerpt=excerpt,
            workers=share.scoring_workers,
        )
        click.echo(f"run {tracker.run_id}: {source} on {len(data.test)} test tracks")
    click.echo("\n".join(score_lines(result.scores)))
