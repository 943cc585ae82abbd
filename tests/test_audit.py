"""`umx-tune optimize --check / --repair`: a real TINY grid study, damaged through the real stores
(MLflow's server and Optuna's storage), found, repaired, and found clean."""

from __future__ import annotations

import datetime
import time
from pathlib import Path

import optuna
import pytest
from conftest import TINY, MainResult, assert_one_line_error, run_main
from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from umx_tune import tracking
from umx_tune.cli.options import option_name
from umx_tune.search import mirror
from umx_tune.search.plans import GRID_ENTRY_ATTR
from umx_tune.search.worker import REASON_ATTR

Capture = pytest.CaptureFixture[str]
TINY_ARGS = [a for n, v in {**TINY, "epochs": 1, "device": "cpu"}.items() for a in (option_name(n), str(v))]
BASE = [*TINY_ARGS, "--no-audio", "--no-system-metrics"]
BEAT = ["--heartbeat-interval", "1"]  # a grace period of 6 s: the audit waits no longer for live workers


def optimize(capsys: Capture, tmp_path: Path, storage: str, *args: str) -> MainResult:
    checkpoints = ["--checkpoint-dir", str(tmp_path / "checkpoints")]
    return run_main(capsys, "optimize", "--storage", storage, "--quiet", *BEAT, *checkpoints, *args)


def audit(capsys: Capture, storage: str, study: str, *flags: str) -> MainResult:
    return run_main(capsys, "optimize", "--study-name", study, "--storage", storage, *BEAT, *flags)


def write_grid(path: Path, *entries: str) -> str:
    path.write_text(
        "entries:\n" + "".join(f"  {e}: {{hidden_size: {8 + 4 * i}}}\n" for i, e in enumerate(entries))
    )
    return str(path)


def children(client: MlflowClient, parent_id: str) -> dict[str, object]:
    experiment = client.get_run(parent_id).info.experiment_id
    runs = client.search_runs([experiment], f"tags.`{tracking.TAG_PARENT_RUN}` = '{parent_id}'")
    return {r.info.run_id: r for r in runs}


def check(capsys: Capture, storage: str, *flags: str, code: int = 1) -> list[str]:
    """The audit's output lines (the last is its verdict), after asserting its exit status."""
    result = audit(capsys, storage, "story", *flags)
    assert result.returncode == code, result.stdout + result.stderr[-2000:]
    return result.stdout.strip().splitlines()


def repair_once(capsys: Capture, storage: str, repairs: int) -> None:
    """--repair fixes everything (that many repairs), --check then finds it clean, a second
    --repair changes nothing."""
    assert sum(line.startswith("repaired ") for line in check(capsys, storage, "--repair", code=0)) == repairs
    assert check(capsys, storage, "--check", code=0)[-1] == "study story: Optuna and MLflow agree"
    assert not [line for line in check(capsys, storage, "--repair", code=0) if line.startswith("repaired")]


@pytest.mark.slow
def test_the_last_worker_heals_what_a_fault_left_before_it_concludes(
    tracking_uri: str, tmp_path: Path, capsys: Capture
) -> None:
    """The chaos run's loss: a worker killed between Optuna's stale FAIL of a trial and its requeue
    leaves the entry neither done nor queued. The study's last worker finds it as --check does,
    queues it again and runs it before it concludes the study complete."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    grid = write_grid(tmp_path / "grid.yaml", "a", "b")
    args = ["--study-name", "healed", "--grid", grid, *BASE]
    assert optimize(capsys, tmp_path, storage, *args, "--timeout", "0.001").returncode == 0  # all queued
    raw = optuna.storages.RDBStorage(storage)
    study = optuna.load_study(study_name="healed", storage=raw)
    entry_b = next(t for t in study.get_trials() if t.user_attrs[GRID_ENTRY_ATTR] == "b")
    raw.set_trial_state_values(entry_b._trial_id, TrialState.RUNNING)  # claimed by a worker that dies
    raw.set_trial_state_values(entry_b._trial_id, TrialState.FAIL)  # failed as stale, never requeued
    resumed = optimize(capsys, tmp_path, storage, "--study-name", "healed")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "healed: repaired lost: b (trial 1): lost (its worker died), never queued again" in resumed.stderr
    states = [(t.user_attrs[GRID_ENTRY_ATTR], t.state.name) for t in study.get_trials()]
    assert states == [("a", "COMPLETE"), ("b", "FAIL"), ("b", "COMPLETE")]
    verdict = audit(capsys, storage, "healed", "--check")
    assert verdict.returncode == 0 and verdict.stdout.endswith("study healed: Optuna and MLflow agree\n")
    parent = MlflowClient().get_run(study.get_trials()[0].user_attrs[mirror.RUN_ID_ATTR])
    parent_id = parent.data.tags[tracking.TAG_PARENT_RUN]
    assert MlflowClient().get_run(parent_id).data.tags[tracking.TAG_STUDY_STATE] == "complete"


@pytest.mark.slow
def test_a_damaged_study_is_found_and_repaired_once(
    tracking_uri: str, tmp_path: Path, capsys: Capture
) -> None:
    """One TINY grid study of two entries (two trainings), damaged four ways through the real stores.

    First issue 15's first defect as it ends (an entry FAILed by a tracking error, never queued
    again, the study concluded 'complete') and a worker killed between its claim and its first beat;
    then, on the clean study, a deleted run, a run with another state and value than its trial, two
    orphan runs left RUNNING, a second run made by one creation and a summary that is not the study's.
    """
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    grid = write_grid(tmp_path / "grid.yaml", "a", "b")
    args = ["--study-name", "story", "--grid", grid, *BASE]
    assert optimize(capsys, tmp_path, storage, *args, "--timeout", "0.001").returncode == 0  # all queued
    raw = optuna.storages.RDBStorage(storage)
    study = optuna.load_study(study_name="story", storage=raw)
    entry_b = next(t for t in study.get_trials() if t.user_attrs[GRID_ENTRY_ATTR] == "b")
    raw.set_trial_state_values(entry_b._trial_id, TrialState.RUNNING)  # as a worker claims it
    raw.set_trial_user_attr(entry_b._trial_id, REASON_ATTR, "TrackingError: MLflow at x does not answer")
    raw.set_trial_state_values(entry_b._trial_id, TrialState.FAIL)  # and no worker is left to heal it
    time.sleep(7)  # past the grace period in which its worker may still be writing

    found = check(capsys, storage, "--check")
    assert "lost: b (trial 1): lost (TrackingError: MLflow at x does not answer), never" in found[1], found
    assert found[0].startswith("missing-run: b (trial 1): FAIL in Optuna, no run (it never got one)")
    repair_once(capsys, storage, repairs=3)  # the run, the entry queued again, the summary
    queued = [t for t in study.get_trials() if t.state == TrialState.WAITING]
    assert [t.user_attrs[GRID_ENTRY_ATTR] for t in queued] == ["a", "b"]  # a was never run

    raw.set_trial_state_values(queued[1]._trial_id, TrialState.RUNNING)  # claimed, killed before a beat
    time.sleep(7)
    assert (
        "stale-trial: b (trial 2): RUNNING without a live heartbeat" in check(capsys, storage, "--check")[0]
    )
    repair_once(capsys, storage, repairs=3)  # failed and queued again, its run, the summary
    assert optimize(capsys, tmp_path, storage, "--study-name", "story").returncode == 0  # runs b
    assert check(capsys, storage, "--check", code=0)[-1] == "study story: Optuna and MLflow agree"
    states = [(t.user_attrs[GRID_ENTRY_ATTR], t.state.name) for t in study.get_trials()]
    assert states == [("a", "COMPLETE"), ("b", "FAIL"), ("b", "FAIL"), ("b", "COMPLETE")]

    a, b = (t for t in study.get_trials() if t.state == TrialState.COMPLETE)
    run_a, run_b = (t.user_attrs["mlflow_run_id"] for t in (a, b))
    client = MlflowClient()
    parent = client.get_run(run_a).data.tags[tracking.TAG_PARENT_RUN]
    experiment = client.get_run(parent).info.experiment_id
    client.delete_run(run_a)
    client.set_terminated(run_b, "FAILED")
    client.log_metric(run_b, tracking.TRIAL_VALUE, 123.0)
    client.set_tag(parent, tracking.TAG_BEST_TRIAL, "7")
    orphans = []
    for number in (str(b.number), "99"):  # a second run of trial b, and a run of no trial
        tags = {
            tracking.TAG_STUDY: "story",
            tracking.TAG_PARENT_RUN: parent,
            tracking.TAG_TRIAL_NUMBER: number,
        }
        orphans.append(client.create_run(experiment, tags=tags).info.run_id)
    # a second answer to run_b's one runs/create (MLflow's HTTP client sends it again when the
    # first answer is cut): its tags, create token and a heartbeat as fresh as a live run's
    made = client.get_run(run_b).data.tags
    repeat = {k: made[k] for k in (tracking.TAG_STUDY, tracking.TAG_PARENT_RUN, tracking.TAG_TRIAL_NUMBER)}
    repeat.update({k: made[k] for k in (tracking.TAG_CREATE_TOKEN, tracking.TAG_HEARTBEAT_GRACE)})
    repeat[tracking.TAG_HEARTBEAT] = str(time.time())
    resent = client.create_run(experiment, tags=repeat).info.run_id

    lines = check(capsys, storage, "--check")
    assert lines[-1] == "study story: 6 disagreements between Optuna and MLflow", lines
    kinds = sorted(line.split(":")[0] for line in lines[:-1])
    assert kinds == ["missing-run", "orphan-run", "orphan-run", "orphan-run", "stale-run", "summary"], lines
    assert any(f"made by a repeat of run {run_b}'s creation" in line for line in lines), lines
    assert any(f"run {run_a} is gone" in line for line in lines)
    assert any("status FAILED (Optuna: FINISHED)" in line and "trial_value 123.0" in line for line in lines)
    assert any("best trial 7 (Optuna: " in line for line in lines)
    repair_once(capsys, storage, repairs=6)
    assert client.get_run(resent).info.lifecycle_stage == "deleted"
    runs = children(client, parent)
    assert runs[run_a].info.status == "FINISHED"  # restored, not a second run of its trial
    assert runs[run_b].info.status == "FINISHED" and runs[run_b].data.metrics[tracking.TRIAL_VALUE] == b.value
    for orphan in orphans:
        assert runs[orphan].info.status == "FAILED" and tracking.TAG_ORPHAN in runs[orphan].data.tags
    best = min((a, b), key=lambda t: t.value)
    assert client.get_run(parent).data.tags[tracking.TAG_BEST_TRIAL] == str(best.number)


def test_bad_audit_requests_are_one_line_errors(tracking_uri: str, tmp_path: Path, capsys: Capture) -> None:
    assert_one_line_error(run_main(capsys, "optimize", "--check"), "--study-name")
    missing = f"sqlite:///{tmp_path / 'none.db'}"
    assert_one_line_error(audit(capsys, missing, "nothing", "--check"), "no Optuna storage")
    assert not (tmp_path / "none.db").exists()


def test_a_lost_trial_that_never_learned_its_run_still_fails_it(tracking_uri: str) -> None:
    """A worker killed between runs/create and recording the run id on its trial (seen in the chaos
    run): mark_lost finds the run by its study and trial number, and leaves a finished one alone."""
    client = MlflowClient()
    experiment = client.create_experiment("unlinked")
    tags = {tracking.TAG_STUDY: "unlinked", tracking.TAG_TRIAL_NUMBER: "3"}
    lost = client.create_run(experiment, tags={**tags, tracking.TAG_TRIAL_STATE: "RUNNING"}).info.run_id
    done = client.create_run(experiment, tags={**tags, tracking.TAG_TRIAL_STATE: "COMPLETE"}).info.run_id
    client.set_terminated(done, "FINISHED")
    now = datetime.datetime.now()
    trial = FrozenTrial(3, TrialState.FAIL, None, now, now, {}, {}, {}, {}, {}, 3)
    mirror.mark_lost(trial, "worker lost", study_name="unlinked")
    assert client.get_run(lost).info.status == "FAILED"
    assert client.get_run(lost).data.tags[tracking.TAG_TRIAL_STATE] == "FAIL"
    assert client.get_run(done).info.status == "FINISHED"
