"""`VisionClient`: the synchronous client. Thread-safe: one instance may serve many threads at once (its
channels are gRPC's, each call keeps its state on its own stack), e.g. `classify_many` over a folder."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vision.choices import ARCHITECTURES, CAM_METHODS, COLORMAPS
from vision.client import requests
from vision.client.base import UPLOAD_MAY_HAVE_CREATED_JOB, CallContext, ClientCore, resolve_settings
from vision.client.channels import open_sync
from vision.client.errors import UnavailableError, from_rpc_error
from vision.client.many import thread_map
from vision.client.requests import Dataset, Image
from vision.client.results import (
    Classification,
    Detection,
    Explanation,
    Job,
    JobEvent,
    JobPage,
    ModelList,
    Outcome,
)
from vision.client.retry import MIN_ATTEMPT_S, next_wait
from vision.client.settings import ClientSettings
from vision.client.stubs import METHODS, Stubs, catalog_of, watch_request
from vision.security.tls import TlsSettings
from vision.v1 import trainer_pb2

if TYPE_CHECKING:
    from vision.evaluation.folder import FolderReport

R = TypeVar("R")


class VisionClient:
    """Calls classifier_svc, explain_svc, detector_svc and trainer_svc over gRPC.

    ``classifier=`` ... ``trainer=`` are gRPC targets (``host:port``, ``dns:///name:port``); a service left
    out is not configured (its methods raise `NotConfiguredError`). ``settings`` sets deadlines and retries
    (None: the defaults; `from_env` reads ``VISION_CLIENT_*``), ``tls`` the transport (None: plaintext),
    ``metadata`` pairs sent with every call. Use it as a context manager, or call `close`.
    """

    def __init__(
        self,
        *,
        classifier: str = "",
        explain: str = "",
        detector: str = "",
        trainer: str = "",
        settings: ClientSettings | None = None,
        tls: TlsSettings | None = None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        addresses = {"classifier": classifier, "explain": explain, "detector": detector, "trainer": trainer}
        self._core = ClientCore(resolve_settings(settings, addresses), tls, metadata)
        self._channels = {
            name: open_sync(self.settings, self._core.tls, name) for name in self._core.services
        }
        self._stubs = Stubs(self._channels)

    @classmethod
    def from_env(cls, metadata: Sequence[tuple[str, str]] = ()) -> VisionClient:
        """A client configured by ``VISION_CLIENT_*`` (addresses, deadlines, retries) and ``VISION_TLS_*``."""
        return cls(settings=ClientSettings(), tls=TlsSettings(), metadata=metadata)

    @property
    def settings(self) -> ClientSettings:
        return self._core.settings

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()

    def __enter__(self) -> VisionClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- calls ----------------------------------------------------------------------------------------------
    def _call(self, name: str, request: Any, timeout: float | None, **kwargs: Any) -> Any:
        """Call method ``name`` with ``request``: retried as `vision.client.retry` says, within one
        deadline; a failure raises its `ServiceError`."""
        spec = METHODS[name]
        stub_method = self._stubs.method(spec)
        ctx = self._core.context(spec.full_name, timeout)
        failures = 0
        while True:
            try:
                return stub_method(request, timeout=ctx.deadline.remaining(), metadata=ctx.metadata, **kwargs)
            except grpc.RpcError as exc:
                failures += 1
                error = from_rpc_error(
                    exc, method=spec.full_name, request_id=ctx.request_id, attempts=failures
                )
                pause = next_wait(
                    self._core.policy, error, failures, ctx.deadline, spec.full_name, spec.idempotent
                )
                if pause is None:
                    raise error from None
                time.sleep(pause)

    def classify(
        self,
        image: Image,
        *,
        model: str = "",
        version: str = "",
        top_k: int = 0,
        timeout: float | None = None,
    ) -> Classification:
        """The ``top_k`` most likely classes (0: the service's default, 5), highest score first."""
        data = requests.read_image(image)
        request = requests.build("Classify", lambda: requests.classify(data, model, version, top_k))
        return Classification.from_proto(self._call("Classify", request, timeout))

    def explain(
        self,
        image: Image,
        *,
        model: str = "",
        version: str = "",
        method: str = CAM_METHODS.default,
        layer: str = "",
        target: int | str | None = None,
        alpha: float | None = None,
        colormap: str = COLORMAPS.default,
        top_k: int = 0,
        overlay_max_side: int = 0,
        overlay_format: str = "",
        timeout: float | None = None,
    ) -> Explanation:
        """A class activation map: ``method`` one of cam, gradcam, gradcampp; ``target`` a class id or label
        (None: the predicted class); ``layer`` a module name (empty: the last conv block);
        ``overlay_max_side`` the overlay's longest side in pixels (0: the service's default, 640);
        ``overlay_format`` "jpeg" or "png" (empty: the service's default, jpeg)."""
        data = requests.read_image(image)
        request = requests.build(
            "Explain",
            lambda: requests.explain(
                data, model=model, version=version, method=method, layer=layer, target=target,
                alpha=alpha, colormap=colormap, top_k=top_k, overlay_max_side=overlay_max_side,
                overlay_format=overlay_format,
            ),
        )  # fmt: skip
        return Explanation.from_proto(self._call("Explain", request, timeout))

    def detect(
        self,
        image: Image,
        *,
        model: str = "",
        version: str = "",
        conf: float | None = None,
        iou: float | None = None,
        max_det: int | None = None,
        classes: Iterable[int | str] = (),
        imgsz: int | None = None,
        annotate: bool = False,
        timeout: float | None = None,
    ) -> Detection:
        """Objects found, highest confidence first, boxes in original-image pixels. None leaves an option to
        the service (conf 0.25, iou 0.45, max_det 300, imgsz 640); ``classes`` keeps only these ids/names."""
        data = requests.read_image(image)
        request = requests.build(
            "Detect",
            lambda: requests.detect(
                data, model=model, version=version, conf=conf, iou=iou, max_det=max_det, classes=classes,
                imgsz=imgsz, annotate=annotate,
            ),
        )  # fmt: skip
        return Detection.from_proto(self._call("Detect", request, timeout))

    def models(
        self, service: str = "classifier", *, task: str = "", timeout: float | None = None
    ) -> ModelList:
        """The stored model versions as ``service`` (classifier, explain, detector) sees them."""
        name = requests.build("ListModels", lambda: catalog_of(service))
        return ModelList.from_proto(self._call(name, requests.list_models(task), timeout))

    def get_job(self, job_id: str, *, timeout: float | None = None) -> Job:
        return Job.from_proto(self._call("GetJob", trainer_pb2.GetJobRequest(job_id=job_id), timeout))

    def cancel_job(self, job_id: str, *, timeout: float | None = None) -> Job:
        """Ask the trainer to cancel the job (not retried: the answer tells what happened)."""
        return Job.from_proto(self._call("CancelJob", trainer_pb2.CancelJobRequest(job_id=job_id), timeout))

    def list_jobs(self, *, page_size: int = 0, page_token: str = "", timeout: float | None = None) -> JobPage:
        """One page of the caller's jobs, newest first (page_size 0: the trainer's default, 50)."""
        request = requests.build(
            "ListJobs", lambda: trainer_pb2.ListJobsRequest(page_size=page_size, page_token=page_token)
        )
        reply = self._call("ListJobs", request, timeout)
        return JobPage(tuple(Job.from_proto(j) for j in reply.jobs), reply.next_page_token)

    # -- training -------------------------------------------------------------------------------------------
    def train(
        self,
        dataset: Dataset,
        *,
        model_name: str,
        class_names: list[str] | None = None,
        architecture: str = ARCHITECTURES.default,
        pretrained: bool | None = None,
        freeze_backbone: bool | None = None,
        optimizer: str | None = None,
        horizontal_flip: bool | None = None,
        epochs: int | None = None,
        batch_size: int | None = None,
        learning_rate: float | None = None,
        val_fraction: float | None = None,
        seed: int | None = None,
        patience: int | None = None,
        label_smoothing: float | None = None,
        img_size: int | None = None,
        nproc_per_node: int | None = None,
        nnodes: int | None = None,
        timeout: float | None = None,
    ) -> Job:
        """Create a training job; returns it as soon as the trainer has queued it (follow it with
        `watch_job`). ``dataset``: a local folder ``DIR/<class>/<image>`` or (class, image) pairs, uploaded;
        or a `TrainerFolder` on the trainer's disk. Options left None take the trainer's defaults.

        The upload is sent once: the client first waits (with retries, within the normal deadline) until the
        trainer answers its health check, but an upload that fails part-way is not sent again (a job may
        exist: the error says to check `list_jobs`)."""
        numbers = dict(
            epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, val_fraction=val_fraction,
            seed=seed, patience=patience, label_smoothing=label_smoothing, img_size=img_size,
            nproc_per_node=nproc_per_node, nnodes=nnodes,
        )  # fmt: skip
        names, images = requests.build("CreateJob", lambda: requests.labelled_images(dataset, class_names))
        spec = requests.build(
            "CreateJob",
            lambda: requests.job_spec(
                dataset, names, model_name=model_name, architecture=architecture, pretrained=pretrained,
                freeze_backbone=freeze_backbone, optimizer=optimizer, horizontal_flip=horizontal_flip,
                numbers=numbers,
            ),
        )  # fmt: skip
        return self._create_job(spec, images, timeout)

    def _create_job(self, spec: Any, images: Iterable[Any], timeout: float | None) -> Job:
        method = METHODS["CreateJob"]
        ctx = self._core.context(method.full_name, timeout, self.settings.upload_deadline_s)
        self._wait_until_serving("trainer", ctx)
        reading = _Recorded(requests.upload_messages(spec, images))
        try:
            reply = self._stubs.method(method)(
                iter(reading), timeout=ctx.deadline.remaining(), metadata=ctx.metadata, wait_for_ready=True
            )
        except grpc.RpcError as exc:
            if reading.error is not None:  # reading an image failed: gRPC cancelled the upload for it
                raise reading.error from None
            error = from_rpc_error(exc, method=method.full_name, request_id=ctx.request_id, attempts=1)
            if isinstance(error, UnavailableError):
                error = UnavailableError(
                    error.details + UPLOAD_MAY_HAVE_CREATED_JOB,
                    kind=error.kind,
                    method=error.method,
                    request_id=error.request_id,
                )
            raise error from None
        return Job.from_proto(reply)

    def _wait_until_serving(self, service: str, upload: CallContext) -> None:
        """Return once ``service`` answers its health check SERVING; retried like an idempotent call, within
        the normal deadline (or what is left of the upload's, if less)."""
        stub = health_pb2_grpc.HealthStub(self._stubs.channel(service))
        ctx = self._core.context(
            "grpc.health.v1.Health/Check", min(upload.deadline.remaining(), self.settings.deadline_s)
        )
        failures = 0
        while True:
            try:
                reply = stub.Check(
                    health_pb2.HealthCheckRequest(), timeout=ctx.deadline.remaining(), metadata=ctx.metadata
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                raise UnavailableError(f"the {service} service is not serving yet", method=ctx.method)
            except grpc.RpcError as exc:
                error = from_rpc_error(
                    exc, method=ctx.method, request_id=ctx.request_id, attempts=failures + 1
                )
            except UnavailableError as exc:
                error = exc
            failures += 1
            pause = next_wait(self._core.policy, error, failures, ctx.deadline, ctx.method)
            if pause is None:
                raise error
            time.sleep(pause)

    def watch_job(
        self, job_id: str, *, after_seq: int = 0, timeout: float | None = None
    ) -> Iterator[JobEvent]:
        """The job's events after ``after_seq`` (0: its whole history), then new ones as they happen, until
        the job ends (its last event ``ends_job``). A stream the trainer ends after its maximum watch time,
        or one that breaks (UNAVAILABLE), is reopened after the last event received; ``timeout`` (default
        ``watch_deadline_s``) bounds the whole watch."""
        method = METHODS["WatchJob"]
        ctx = self._core.context(method.full_name, timeout, self.settings.watch_deadline_s)
        seq, failures = after_seq, 0
        while True:
            call = self._stubs.method(method)(
                watch_request(job_id, seq), timeout=ctx.deadline.remaining(), metadata=ctx.metadata
            )
            try:
                for message in call:
                    failures = 0
                    event = JobEvent.from_proto(message)
                    seq = event.seq
                    yield event
                    if event.ends_job:
                        return
            except grpc.RpcError as exc:
                failures += 1
                error = from_rpc_error(
                    exc, method=method.full_name, request_id=ctx.request_id, attempts=failures
                )
                pause = next_wait(self._core.policy, error, failures, ctx.deadline, method.full_name)
                if pause is None:
                    raise error from None
                time.sleep(pause)
                continue
            finally:
                call.cancel()  # a caller that stopped iterating: the trainer's stream ends too
            # The stream ended without the job's last event: the trainer's maximum watch time, or nothing
            # after ``seq`` of a job that had ended already.
            if self.get_job(job_id, timeout=max(MIN_ATTEMPT_S, ctx.deadline.remaining())).state.ended:
                return

    # -- many images ----------------------------------------------------------------------------------------
    def _limit(self, concurrency: int | None) -> int:
        return concurrency or self.settings.concurrency

    def classify_many(
        self, images: Iterable[Image], *, concurrency: int | None = None, **options: Any
    ) -> Iterator[Outcome]:
        """`classify` each image, ``concurrency`` calls at a time (default: the setting), in completion
        order; a failed image gives an `Outcome` with its error, the others go on."""
        return thread_map(lambda image: self.classify(image, **options), images, self._limit(concurrency))

    def explain_many(
        self, images: Iterable[Image], *, concurrency: int | None = None, **options: Any
    ) -> Iterator[Outcome]:
        return thread_map(lambda image: self.explain(image, **options), images, self._limit(concurrency))

    def detect_many(
        self, images: Iterable[Image], *, concurrency: int | None = None, **options: Any
    ) -> Iterator[Outcome]:
        return thread_map(lambda image: self.detect(image, **options), images, self._limit(concurrency))

    def evaluate(
        self,
        folder: str | Path,
        *,
        model: str = "",
        version: str = "",
        concurrency: int | None = None,
        timeout: float | None = None,
    ) -> FolderReport:
        """Score the model on the ImageFolder ``folder`` (``<class>/<image>``, folders named after the
        model's classes): top-1 / top-5 accuracy, per-class precision, recall, F1, the confusion matrix,
        the misclassified files (`vision.client.evaluation`); charts need matplotlib: `FolderReport.write`."""
        from vision.client.evaluation import evaluate_folder_with

        return evaluate_folder_with(
            self, Path(folder), model=model, version=version, concurrency=self._limit(concurrency),
            timeout=timeout,
        )  # fmt: skip


class _Recorded:
    """An iterator that remembers the exception that ended it (gRPC's sending thread swallows it)."""

    def __init__(self, messages: Iterator[Any]) -> None:
        self._messages = messages
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[Any]:
        try:
            yield from self._messages
        except BaseException as exc:
            self.error = exc
            raise
