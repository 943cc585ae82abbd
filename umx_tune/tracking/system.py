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
from collections.abc import Iterator
from contextlib import contextmanager

from umx_tune.tracking import SYSTEM_METRICS_INTERVAL


@contextmanager
def system_metrics(run_id: str, *, enabled: bool, resume: bool) -> Iterator[None]:
    """Sample the machine every SYSTEM_METRICS_INTERVAL seconds into run_id while the block runs.

    MLflow's MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL (seconds) overrides the interval. A resumed
    run continues its step numbers.
    """
    if not enabled:
        yield
        return
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    # a sample lost while the server is away is not the run's error: the run's own calls say so
    # (one line), and MLflow's warnings from the sampling thread would come before that line
    logging.getLogger("mlflow.system_metrics").setLevel(logging.CRITICAL)
    monitor = SystemMetricsMonitor(run_id, sampling_interval=SYSTEM_METRICS_INTERVAL, resume_logging=resume)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()  # joins the sampling thread and sends what it holds, while the run is open
