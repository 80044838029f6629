"""What a model service's engine reports: stage metrics (Prometheus) and stage spans (OpenTelemetry).

Per request: ``vision_decode_seconds`` and ``vision_queue_wait_seconds``; per batch (observed once, by its
first request): ``vision_inference_seconds`` by model and version and ``vision_batch_size``; at each scrape:
``vision_queue_depth``, ``vision_models_loaded`` (1 per version in memory), and on CUDA the devices' memory
and utilisation from NVML; ``vision_model_load_failures_total`` counts versions that could not be loaded.

Spans, children of the call's server span: ``decode`` (decoding and preprocessing, in the request's
thread), ``queue`` and ``inference`` (on the batcher's thread; recorded afterwards from their times, with
the batch size) and ``encode`` (the reply's image or classes).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from vision.serving.batching import Batched
from vision.telemetry.metrics import LATENCY_BUCKETS
from vision.telemetry.tracing import record_span, span

log = logging.getLogger(__name__)

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class EngineTelemetry:
    def __init__(
        self,
        registry: CollectorRegistry,
        queue_depth: Callable[[], int],
        loaded: Callable[[], Iterable[tuple[str, str]]],
        device: Any,
    ) -> None:
        self.decode = Histogram(
            "vision_decode_seconds",
            "Decoding and preprocessing of one image, in the request's thread.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_wait = Histogram(
            "vision_queue_wait_seconds",
            "Time a request waited in the batcher's queue.",
            ("model",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.inference = Histogram(
            "vision_inference_seconds",
            "One batch through the model (forward pass and its postprocessing on the batcher's thread).",
            ("model", "version"),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "vision_batch_size",
            "Requests per model call.",
            ("model",),
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        depth = Gauge("vision_queue_depth", "Requests waiting for the batcher.", registry=registry)
        depth.set_function(queue_depth)
        self.load_failures = Counter(
            "vision_model_load_failures",
            "Stored versions that could not be loaded.",
            ("model",),
            registry=registry,
        )
        registry.register(_LoadedModels(loaded))
        if getattr(device, "type", "cpu") == "cuda":
            registry.register(NvmlCollector())

    def load_failed(self, name: str, _version: str) -> None:
        self.load_failures.labels(name).inc()

    def decoding(self) -> Any:
        """The ``decode`` span around decoding (the histogram is observed by `answered`)."""
        return span("decode")

    def encoding(self) -> Any:
        return span("encode")

    def observe(self, name: str, version: str, decode_ms: float, batched: Batched[Any]) -> None:
        """One answered request: its stage metrics, and the ``queue`` and ``inference`` spans."""
        self.decode.observe(decode_ms / 1000)
        self.queue_wait.labels(name).observe(batched.queue_ms / 1000)
        if batched.first_in_batch:
            self.inference.labels(name, version).observe(batched.inference_ms / 1000)
            self.batch_size.labels(name).observe(batched.batch_size)
        record_span("queue", batched.enqueued_ns, batched.started_ns, model=name)
        record_span(
            "inference",
            batched.started_ns,
            batched.finished_ns,
            model=name,
            version=version,
            batch_size=batched.batch_size,
        )


class _LoadedModels(Collector):
    def __init__(self, loaded: Callable[[], Iterable[tuple[str, str]]]) -> None:
        self._loaded = loaded

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "vision_models_loaded", "Model versions in memory (1 each).", labels=("model", "version")
        )
        for name, version in sorted(self._loaded()):
            family.add_metric((name, version), 1)
        yield family

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


class NvmlCollector(Collector):
    """Memory and utilisation of every visible NVIDIA GPU, read from NVML at each scrape.

    ``vision_gpu_memory_used_bytes``, ``vision_gpu_memory_total_bytes`` and ``vision_gpu_utilization_ratio``
    (0..1, over NVML's last sample period), labelled ``gpu`` (the index). Without NVML (no driver), none."""

    def __init__(self) -> None:
        self._nvml: Any = None
        try:
            import pynvml  # nvidia-ml-py

            pynvml.nvmlInit()
            self._nvml = pynvml
        except Exception as exc:  # no driver, no library: the service runs, without GPU metrics
            log.warning("GPU metrics off: NVML could not be initialised (%s)", exc)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if self._nvml is None:
            return
        nvml = self._nvml
        used = GaugeMetricFamily("vision_gpu_memory_used_bytes", "GPU memory in use.", labels=("gpu",))
        total = GaugeMetricFamily("vision_gpu_memory_total_bytes", "GPU memory.", labels=("gpu",))
        busy = GaugeMetricFamily(
            "vision_gpu_utilization_ratio", "Share of time the GPU was busy (0..1).", labels=("gpu",)
        )
        try:
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                rates = nvml.nvmlDeviceGetUtilizationRates(handle)
                used.add_metric((str(index),), float(memory.used))
                total.add_metric((str(index),), float(memory.total))
                busy.add_metric((str(index),), rates.gpu / 100)
        except Exception as exc:  # a GPU that fell off the bus must not break the scrape
            log.warning("GPU metrics: NVML query failed (%s)", exc)
        yield from (used, total, busy)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())
