"""What a run cost: MLflow's system metrics, sampled in the background while the run is open.

MLflow's SystemMetricsMonitor logs `system/cpu_utilization_percentage`,
`system/system_memory_usage_megabytes` and `…_percentage`, `system/disk_usage_…`,
`system/network_receive_megabytes` / `…_transmit_…` and, where NVML finds an NVIDIA GPU,
`system/gpu_<i>_utilization_percentage` / `…_memory_usage_…`, one value per sampling interval
(step = sample number). umx-tune's runs are made through the client API (no fluent active run), so
the monitor is started here, by run id, and stopped before the run ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

from mlflow.entities import Metric
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.tracking import MlflowClient

from umx_tune.tracking import SYSTEM_METRICS_INTERVAL, SYSTEM_METRICS_SEND_EVERY

_log = logging.getLogger(__name__)


class Sampler(SystemMetricsMonitor):
    """MLflow's monitor, sending its samples SYSTEM_METRICS_SEND_EVERY at a time in one batch.

    MLflow's own loop asks the server for the run after every sample (to stop once the run has
    ended) and sends each sample on its own: two requests every interval, for the whole run. This
    one is stopped by the block that started it, before the run ends, so it asks nothing. A part
    interval at the end is not a sample (as in MLflow's loop); what is pending is sent then.
    """

    def monitor(self) -> None:
        client = MlflowClient(self._tracking_uri)
        pending: list[Metric] = []
        while True:
            self.collect_metrics()
            if self._shutdown_event.wait(self.sampling_interval):
                break
            pending += self.sample()
            if self._logging_step % SYSTEM_METRICS_SEND_EVERY == 0:
                _send(client, self._run_id, pending)
                pending = []
        _send(client, self._run_id, pending)

    def sample(self) -> list[Metric]:
        """What the monitors collected since the last sample, as one step's metrics
        ('system/<name>'); the monitors start over and the step advances."""
        prefix = self._metrics_prefix + (f"{self.node_id}/" if self.node_id else "")
        stamp, step = int(time.time() * 1000), self._logging_step
        metrics = [Metric(prefix + k, v, stamp, step) for k, v in self.aggregate_metrics().items()]
        self._logging_step += 1
        for sampled in self.monitors:
            sampled.clear_metrics()
        return metrics


def _send(client: MlflowClient, run_id: str, metrics: list[Metric]) -> None:
    """metrics in one batch (none: nothing sent); a sample lost while the server is away is not
    the run's error: the run's own calls say so."""
    if metrics:
        try:
            client.log_batch(run_id, metrics=metrics)
        except Exception as err:  # whatever a best-effort sample's failure raises
            _log.debug("system metrics of run %s not sent: %s", run_id, err)


@contextmanager
def system_metrics(run_id: str, *, enabled: bool, resume: bool) -> Iterator[None]:
    """Sample the machine every SYSTEM_METRICS_INTERVAL seconds into run_id while the block runs.

    MLflow's MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL (seconds) overrides the interval. A resumed
    run continues its step numbers.
    """
    if not enabled:
        yield
        return
    # MLflow's warnings from the sampling thread (a GPU library it cannot find, …) would come
    # before the run's own one-line errors
    logging.getLogger("mlflow.system_metrics").setLevel(logging.CRITICAL)
    sampler = Sampler(run_id, sampling_interval=SYSTEM_METRICS_INTERVAL, resume_logging=resume)
    sampler.start()
    try:
        yield
    finally:
        sampler.finish()  # joins the sampling thread (which sends what it holds), while the run is open
