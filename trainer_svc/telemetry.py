"""What trainer_svc reports to Prometheus: jobs by state, finished jobs, epochs, throughput, upload bytes.

* ``vision_trainer_jobs{state}``: read from the job database at each scrape;
* ``vision_trainer_jobs_finished_total{state}``: succeeded, failed, cancelled;
* ``vision_trainer_epoch_seconds``: wall time of each epoch as the service saw it (training, validation and
  checkpoint);
* ``vision_trainer_images_per_second``: each epoch's training throughput, as its worker measured it;
* ``vision_trainer_upload_bytes_total``: image bytes of uploaded datasets, counted as they arrive.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from trainer_svc.jobs.database import JobState

EPOCH_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
THROUGHPUT_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
FINAL_STATES = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class TrainerTelemetry:
    def __init__(self, registry: CollectorRegistry, jobs_by_state: Callable[[], dict[str, int]]) -> None:
        self.finished = Counter(
            "vision_trainer_jobs_finished", "Jobs that ended, by final state.", ("state",), registry=registry
        )
        for state in FINAL_STATES:
            self.finished.labels(state.value)  # a series from the start: rate() and alerts see the first
        self.epoch_seconds = Histogram(
            "vision_trainer_epoch_seconds",
            "Wall time of one training epoch.",
            buckets=EPOCH_BUCKETS,
            registry=registry,
        )
        self.images_per_second = Histogram(
            "vision_trainer_images_per_second",
            "Training images per second of each epoch.",
            buckets=THROUGHPUT_BUCKETS,
            registry=registry,
        )
        self.upload_bytes = Counter(
            "vision_trainer_upload_bytes", "Image bytes of uploaded training datasets.", registry=registry
        )
        registry.register(_JobsByState(jobs_by_state))
        self._lock = threading.Lock()
        self._epoch_started: dict[str, float] = {}  # job id -> when its current epoch began (monotonic)

    def job_started(self, job_id: str) -> None:
        """A worker began (or resumed) the job: its next epoch is timed from now."""
        with self._lock:
            self._epoch_started[job_id] = time.monotonic()

    def epoch_done(self, job_id: str, images_per_second: float) -> None:
        now = time.monotonic()
        with self._lock:
            started = self._epoch_started.get(job_id)
            self._epoch_started[job_id] = now
        if started is not None:
            self.epoch_seconds.observe(now - started)
        if images_per_second > 0:
            self.images_per_second.observe(images_per_second)

    def job_finished(self, job_id: str, state: JobState) -> None:
        with self._lock:
            self._epoch_started.pop(job_id, None)
        if state in FINAL_STATES:
            self.finished.labels(state.value).inc()


class _JobsByState(Collector):
    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("vision_trainer_jobs", "Jobs in each state.", labels=("state",))
        counts = self._counts()
        for state in JobState:
            family.add_metric((state.value,), counts.get(state.value, 0))
        yield family

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())
