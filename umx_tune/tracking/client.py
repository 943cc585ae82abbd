"""Every MLflow call umx-tune makes: runs, experiments, artifacts, searches, models.

Each call names its run (no active run of MLflow's fluent API is ever used), is retried by the one
policy (tracking.retry) and fails as a one-line TrackingError. Callers pass plain dicts; MLflow's
entities (tags, params, metrics, datasets) are built here.
"""

from __future__ import annotations

import os
import posixpath
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, ParamSpec, TypeVar

import mlflow
import requests
from mlflow.entities import Experiment, Metric, Param, Run, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repo import ArtifactRepository
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient

from umx_tune.errors import TrackingError, TrackingUnreachable, first_line
from umx_tune.tracking import MODEL_ARTIFACT, MODEL_FLAVOR, TAG_CREATE_TOKEN, filter_literal, tag_equals
from umx_tune.tracking.retry import retried, unreachable

__all__ = ["Client", "Experiment", "Run"]  # Experiment, Run: the entities callers read back

_P = ParamSpec("_P")
_R = TypeVar("_R")
PAGE = 1000  # runs per search request
_SENDER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="umx-tune-log")  # Client.log_soon's


def _refused(doing: str, err: Exception) -> TrackingError:
    """The one-line TrackingError of a failed call (credentials named when they are the cause);
    TrackingUnreachable where the server did not answer at all."""
    text = first_line(err)
    if unreachable(err):
        return TrackingUnreachable(f"MLflow did not answer {doing}: {text}")
    if "401" in text or "403" in text or "not authenticated" in text.lower():
        credentials = "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD"
        text = f"the server rejected the credentials ({credentials}): {text}"
    return TrackingError(f"MLflow refused {doing}: {text}")


def hide_run_links() -> None:
    """Stop MLflow printing '🏃 View run … at: <url>' on stdout whenever a run on a server ends
    (for output kept to a command's own summary, as `optimize --quiet` keeps it)."""
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"


class _Folder:
    """The MLflow flavor of a model that is a folder of files (MLflow's Model.log calls save_model)."""

    def __init__(self, write: Callable[[Path], None], conf: Mapping[str, object]) -> None:
        self._write = write
        self._conf = conf

    def save_model(self, path: str, mlflow_model: Any) -> None:
        self._write(Path(path))
        mlflow_model.add_flavor(MODEL_FLAVOR, **self._conf)
        mlflow_model.save(str(Path(path) / "MLmodel"))


def _now_ms() -> int:
    return int(time.time() * 1000)


def _tags(tags: Mapping[str, object]) -> list[RunTag]:
    return [RunTag(key, str(value)) for key, value in tags.items()]


# metrics by step: {step: {name: value}}, what one batch may hold
Steps = Mapping[int, Mapping[str, float]]


def _metrics(steps: Steps, model_id: str | None = None) -> list[Metric]:
    """MLflow's metrics of every step; those of step 0 linked to the LoggedModel model_id, if given."""
    now = _now_ms()
    return [
        Metric(key, float(value), now, step, model_id=model_id if step == 0 else None)
        for step, metrics in steps.items()
        for key, value in metrics.items()
    ]


class Client:
    """MlflowClient for umx-tune, on the tracking URI current when it is made."""

    # (store, name) -> experiment id: a worker starts run after run in one experiment
    _experiment_ids: ClassVar[dict[tuple[str, str], str]] = {}
    _missing_experiments: ClassVar[set[tuple[str, str]]] = set()  # found missing by this process
    # run id -> artifact URI, of the runs this process made or read: their uploads need not ask
    _artifact_uris: ClassVar[dict[str, str]] = {}

    def __init__(self) -> None:
        try:
            self._mlflow = MlflowClient()
        except MlflowException as err:  # a tracking URI of no scheme MLflow knows (bogus://x)
            raise TrackingError(
                f"MLflow cannot use tracking URI {mlflow.get_tracking_uri()!r}: {first_line(err)}"
            ) from None
        self.tracking_uri: str = self._mlflow.tracking_uri
        # the store this client speaks to, for what a process remembers of it (a local store's
        # URI may be relative to the working directory)
        remote = self.tracking_uri.startswith(("http://", "https://"))
        self.store: str = self.tracking_uri if remote else f"{self.tracking_uri} in {os.getcwd()}"

    def _call(self, doing: str, call: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
        """call under the retry policy; its failure as a one-line TrackingError about `doing`."""
        try:
            return retried(call)(*args, **kwargs)
        except (MlflowException, requests.RequestException) as err:  # artifact uploads raise the latter
            raise _refused(doing, err) from None

    # experiments
    def find_experiment(self, name: str) -> Experiment | None:
        return self._call(f"to read experiment {name!r}", self._mlflow.get_experiment_by_name, name)

    def known_experiment_id(self, name: str) -> str | None:
        """The experiment's id (None where there is none), asked of the server until it has one."""
        key = (self.store, name)
        if key not in Client._experiment_ids:
            found = self.find_experiment(name)
            if found is None:
                Client._missing_experiments.add(key)
                return None
            Client._experiment_ids[key] = str(found.experiment_id)
        return Client._experiment_ids[key]

    def learn_experiment_id(self, name: str, experiment_id: str) -> None:
        """The experiment's id as a run read from the server gives it: not asked for again."""
        Client._experiment_ids[(self.store, name)] = experiment_id

    def experiment_id(self, name: str) -> str:
        """The experiment's id, creating it (another worker may create it at the same moment; an
        experiment this process found missing is created without asking again: a create that finds
        it made reads its id)."""
        key = (self.store, name)
        known = None if key in Client._missing_experiments else self.known_experiment_id(name)
        if known is not None:
            return known
        if key not in Client._experiment_ids:
            Client._experiment_ids[key] = self._create_experiment(name)
            Client._missing_experiments.discard(key)
        return Client._experiment_ids[key]

    def _create_experiment(self, name: str) -> str:
        try:
            return str(self._call(f"to create experiment {name!r}", self._mlflow.create_experiment, name))
        except TrackingError:
            found = self.find_experiment(name)  # another worker created it first: its id
            if found is None:
                raise
            return str(found.experiment_id)

    def experiment_name(self, experiment_id: str) -> str:
        doing = f"to read experiment {experiment_id}"
        return str(self._call(doing, self._mlflow.get_experiment, experiment_id).name)

    def experiment_ids(self) -> list[str]:
        """The ids of every active experiment."""
        search = self._mlflow.search_experiments
        found = self._pages("to list experiments", lambda token: search(page_token=token))
        return [e.experiment_id for e in found]

    # runs
    def create_run(self, experiment_id: str, run_name: str | None, tags: Mapping[str, object]) -> Run:
        """A new RUNNING run, tagged as MLflow's fluent API would (user, source, git commit) and
        with tags (mlflow.parentRunId among them nests it).

        Made once: the run carries a random token, and a repeat after a cut answer looks for the
        run that token names before it creates one, so no orphan is left RUNNING.
        """
        from mlflow.tracking.context.registry import resolve_tags

        token = uuid.uuid4().hex
        resolved = resolve_tags({**{key: str(value) for key, value in tags.items()}, TAG_CREATE_TOKEN: token})
        attempted = False

        def create() -> Run:
            nonlocal attempted
            if attempted:
                made = self._mlflow.search_runs([experiment_id], tag_equals(TAG_CREATE_TOKEN, token))
                if made:
                    return made[0]
            attempted = True
            return self._mlflow.create_run(experiment_id, tags=resolved, run_name=run_name)

        return self._known(self._call("to start the run", create))

    def get_run(self, run_id: str) -> Run:
        return self._known(self._call(f"to read run {run_id}", self._mlflow.get_run, run_id))

    def _known(self, run: Run) -> Run:
        Client._artifact_uris[run.info.run_id] = run.info.artifact_uri
        return run

    def find_run(self, run_id: str) -> Run | None:
        """The run, or None where the server has no run of that id."""
        try:
            return self._known(retried(self._mlflow.get_run)(run_id))
        except MlflowException as err:
            if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise _refused(f"to read run {run_id}", err) from None

    def reopen_run(self, run_id: str, name: str | None = None) -> None:
        """Mark an ended run RUNNING again (renamed, if name is given)."""
        self._call(f"to reopen run {run_id}", self._mlflow.update_run, run_id, status="RUNNING", name=name)

    def delete_run(self, run_id: str) -> None:
        """Mark the run deleted (MLflow keeps it until its garbage collection)."""
        self._call(f"to delete run {run_id}", self._mlflow.delete_run, run_id)

    def restore_run(self, run_id: str) -> None:
        """Bring a deleted run back (MLflow keeps it until its garbage collection)."""
        self._call(f"to restore run {run_id}", self._mlflow.restore_run, run_id)

    def end_run(self, run_id: str, status: str) -> None:
        """End the run with status (FINISHED, FAILED, KILLED); safe to repeat."""
        self._call(f"to end run {run_id}", self._mlflow.set_terminated, run_id, status=status)

    def log(
        self,
        run_id: str,
        *,
        metrics: Mapping[str, float] | None = None,
        params: Mapping[str, object] | None = None,
        tags: Mapping[str, object] | None = None,
        step: int = 0,
    ) -> None:
        """Metrics (at step), params and tags, in one batch; waits for the server."""
        self.log_steps(run_id, {step: metrics or {}}, params=params, tags=tags)

    def log_steps(
        self,
        run_id: str,
        steps: Steps,
        *,
        params: Mapping[str, object] | None = None,
        tags: Mapping[str, object] | None = None,
        model_id: str | None = None,
    ) -> None:
        """Metrics of several steps (those of step 0 linked to the LoggedModel model_id, if given),
        params and tags, in one batch; waits for the server."""
        self._call(
            f"to log to run {run_id}",
            self._mlflow.log_batch,
            run_id,
            metrics=_metrics(steps, model_id),
            params=[Param(key, str(value)) for key, value in (params or {}).items()],
            tags=_tags(tags or {}),
        )

    def set_tag(self, run_id: str, key: str, value: object) -> None:
        self._call(f"to tag run {run_id}", self._mlflow.set_tag, run_id, key, str(value))

    def log_soon(
        self, run_id: str, steps: Steps, tags: Mapping[str, object] | None = None
    ) -> Callable[[], None]:
        """Log metrics (and tags, in the same batch) without waiting on the server: `log_steps` on
        this process's one background sender, so batches land in the order they were sent. Returns
        the function that waits for it (raising its TrackingError).

        Not MLflow's asynchronous logging: a run's end (set_terminated) shuts that down, waiting
        out its logging thread's poll (about half a second per run).
        """
        future = _SENDER.submit(self.log_steps, run_id, steps, tags=tags)
        return lambda: future.result()

    def log_dataset(self, run_id: str, root: Path, name: str, digest: str, context: str) -> None:
        """The dataset folder as an input of the run, identified by name and digest."""
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        with warnings.catch_warnings():  # MLflow warns that two registered local sources both match
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(str(root))
        dataset = MetaDataset(source=source, name=name, digest=digest)  # type: ignore[abstract]
        entry = DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])
        self._call(f"to log dataset {name!r} to run {run_id}", self._mlflow.log_inputs, run_id, [entry])

    # artifacts
    def _artifacts(self, run_id: str) -> ArtifactRepository:
        """The run's artifact store (its URI read from the server only if this process has not)."""
        uri = Client._artifact_uris.get(run_id) or self.get_run(run_id).info.artifact_uri
        return get_artifact_repository(uri, tracking_uri=self.tracking_uri)

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        doing = f"to store {path.name} in run {run_id}"
        self._call(doing, lambda: self._artifacts(run_id).log_artifact(str(path), artifact_path))

    def log_artifacts(self, run_id: str, folder: Path, artifact_path: str | None = None) -> None:
        """The folder's files under artifact_path (None: at the run's artifact root)."""
        doing = f"to store {artifact_path or folder.name}/ in run {run_id}"
        self._call(doing, lambda: self._artifacts(run_id).log_artifacts(str(folder), artifact_path))

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        """text as the file artifact_file ('folder/name.json') of the run."""
        with tempfile.TemporaryDirectory(prefix="umx-tune-") as tmp:
            path = Path(tmp) / posixpath.basename(artifact_file)
            path.write_text(text, encoding="utf-8")
            self.log_artifact(run_id, path, posixpath.dirname(artifact_file) or None)

    def download_artifact(self, run_id: str, artifact_path: str, dst_dir: Path) -> Path:
        """One artifact (a file or a folder) of the run, downloaded into dst_dir; its local path.

        The run's artifact store is asked directly, its URI read from the server only if this
        process has not (mlflow.artifacts.download_artifacts reads the run and searches its logged
        models first, three requests for each file). TrackingError (one line) when the run or the
        artifact does not exist or cannot be read.
        """
        # MLflow's download progress bar would precede a later one-line error on stderr
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        store = self._artifacts(run_id)
        dst_dir.mkdir(parents=True, exist_ok=True)
        doing = f"to download {artifact_path} of run {run_id}"
        try:
            return Path(self._call(doing, store.download_artifacts, artifact_path, str(dst_dir)))
        except OSError as err:  # a local artifact store without the file
            raise TrackingError(f"MLflow refused {doing}: {first_line(err)}") from None

    def read_text(self, run_id: str, artifact_file: str) -> str | None:
        """A text artifact of the run (as log_text stored it), or None where the run has none."""
        folder = posixpath.dirname(artifact_file) or None
        doing = f"to list the artifacts of run {run_id}"
        listed = self._call(doing, self._mlflow.list_artifacts, run_id, folder)
        if artifact_file not in {entry.path for entry in listed}:
            return None
        with tempfile.TemporaryDirectory(prefix="umx-tune-") as tmp:
            return self.download_artifact(run_id, artifact_file, Path(tmp)).read_text()

    # searches
    def search_runs(self, experiment_ids: Sequence[str], filter_string: str = "") -> list[Run]:
        """Every active run of the experiments that matches the filter (all pages)."""

        def page(token: str | None) -> Any:
            return self._mlflow.search_runs(
                list(experiment_ids), filter_string, ViewType.ACTIVE_ONLY, max_results=PAGE, page_token=token
            )

        return [self._known(run) for run in self._pages(f"to search runs ({filter_string or 'all'})", page)]

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """(step, value) of every value of a metric, in step order."""
        history = self._call(f"to read {key} of run {run_id}", self._mlflow.get_metric_history, run_id, key)
        return sorted((m.step, m.value) for m in history)

    def _pages(self, doing: str, search: Callable[[str | None], Any]) -> list[Any]:
        """Every item of a paged search (search takes a page token, returns a PagedList)."""
        items: list[Any] = []
        token: str | None = None
        while True:
            found = self._call(doing, search, token)
            items.extend(found)
            token = found.token
            if not token:
                return items

    # models
    def log_model(
        self, run: Run, write: Callable[[Path], None], flavor: Mapping[str, object]
    ) -> tuple[str, str]:
        """The run's model, as its output: the files write(folder) puts into a folder plus the MLmodel
        file naming MODEL_FLAVOR (with flavor's keys); returns its model URI and LoggedModel id.

        No pytorch flavor: its pickle would run any code it holds when loaded (tracking.models
        reads the folder instead). The LoggedModel is made here, in the run's experiment (MLflow
        would put one logged without an active run in the default experiment), in MLflow's
        Model.log steps less its reads: Model.log reads the run's every metric history back to
        link its step-0 metrics to the model, which the caller does by logging them with the
        model's id (`log_steps`'s model_id). A retry after a cut may leave the first attempt's
        LoggedModel behind, PENDING.
        """
        from mlflow.entities import LoggedModelOutput, LoggedModelStatus
        from mlflow.models import Model

        def log() -> tuple[str, str]:
            logged = self._mlflow.create_logged_model(
                run.info.experiment_id, name=MODEL_ARTIFACT, source_run_id=run.info.run_id
            )
            model_id = logged.model_id
            meta = Model(
                artifact_path=logged.artifact_location,
                run_id=run.info.run_id,
                model_uuid=model_id,
                model_id=model_id,
            )
            with tempfile.TemporaryDirectory(prefix="umx-tune-") as tmp:
                _Folder(write, flavor).save_model(tmp, meta)
                get_artifact_repository(
                    logged.artifact_location, tracking_uri=self.tracking_uri
                ).log_artifacts(tmp)
            self._mlflow.log_outputs(run.info.run_id, [LoggedModelOutput(model_id, step=0)])
            self._mlflow.finalize_logged_model(model_id, LoggedModelStatus.READY)
            return f"models:/{model_id}", model_id

        return self._call(f"to store the model of run {run.info.run_id}", log)

    def register_model(self, model_uri: str, name: str, run_id: str) -> str:
        """A version of registered model `name` for the run's model, made once: a repeat (several
        workers concluding at once, or a retry after a cut) finds it. Returns 'name/version'."""
        import mlflow

        def register() -> str:
            for existing in self._mlflow.search_model_versions(f"name = {filter_literal(name)}"):
                if existing.run_id == run_id:
                    return f"{name}/{existing.version}"
            return f"{name}/{mlflow.register_model(model_uri, name).version}"

        return self._call(f"to register the model {model_uri} as {name!r}", register)
