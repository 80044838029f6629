"""`AsyncVisionClient`: the asyncio client (grpc.aio). Safe for many concurrent calls on one instance:
each call's state lives in its own coroutine, the channels multiplex them. Channels are opened in the event
loop on first use, so make and use the client in one loop.

Training uploads go over a synchronous channel in a worker thread: grpc's asyncio client can report
INTERNAL instead of the trainer's status when the trainer refuses an upload part-way (grpc/grpc#36066).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import grpc

from vision.choices import CAM_METHODS, COLORMAPS
from vision.client import requests
from vision.client.base import ClientCore, resolve_settings
from vision.client.channels import open_async
from vision.client.errors import from_rpc_error
from vision.client.many import task_map
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
from vision.client.sync import VisionClient
from vision.security.tls import TlsSettings
from vision.v1 import trainer_pb2


class AsyncVisionClient:
    """The asyncio twin of `VisionClient`: the same constructor, methods and results, awaited (and
    `watch_job` an async iterator). Use ``async with``, or ``await close()``."""

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
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs = Stubs(self._channels)
        self._uploader: VisionClient | None = None

    @classmethod
    def from_env(cls, metadata: Sequence[tuple[str, str]] = ()) -> AsyncVisionClient:
        """A client configured by ``VISION_CLIENT_*`` (addresses, deadlines, retries) and ``VISION_TLS_*``."""
        return cls(settings=ClientSettings(), tls=TlsSettings(), metadata=metadata)

    @property
    def settings(self) -> ClientSettings:
        return self._core.settings

    def _open(self) -> None:
        if not self._channels:
            for name in self._core.services:
                self._channels[name] = open_async(self.settings, self._core.tls, name)

    async def close(self) -> None:
        channels = list(self._channels.values())
        self._channels.clear()
        self._stubs = Stubs(self._channels)
        for channel in channels:
            await channel.close(grace=None)
        if self._uploader is not None:
            self._uploader.close()

    async def __aenter__(self) -> AsyncVisionClient:
        self._open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(self, name: str, request: Any, timeout: float | None) -> Any:
        spec = METHODS[name]
        self._open()
        stub_method = self._stubs.method(spec)
        ctx = self._core.context(spec.full_name, timeout)
        failures = 0
        while True:
            try:
                return await stub_method(request, timeout=ctx.deadline.remaining(), metadata=ctx.metadata)
            except grpc.aio.AioRpcError as exc:
                failures += 1
                error = from_rpc_error(
                    exc, method=spec.full_name, request_id=ctx.request_id, attempts=failures
                )
                pause = next_wait(
                    self._core.policy, error, failures, ctx.deadline, spec.full_name, spec.idempotent
                )
                if pause is None:
                    raise error from None
                await asyncio.sleep(pause)

    async def classify(
        self,
        image: Image,
        *,
        model: str = "",
        version: str = "",
        top_k: int = 0,
        timeout: float | None = None,
    ) -> Classification:
        """See `VisionClient.classify`."""
        data = await _read(image)
        request = requests.build("Classify", lambda: requests.classify(data, model, version, top_k))
        return Classification.from_proto(await self._call("Classify", request, timeout))

    async def explain(
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
        """See `VisionClient.explain`."""
        data = await _read(image)
        request = requests.build(
            "Explain",
            lambda: requests.explain(
                data, model=model, version=version, method=method, layer=layer, target=target,
                alpha=alpha, colormap=colormap, top_k=top_k, overlay_max_side=overlay_max_side,
                overlay_format=overlay_format,
            ),
        )  # fmt: skip
        return Explanation.from_proto(await self._call("Explain", request, timeout))

    async def detect(
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
        """See `VisionClient.detect`."""
        data = await _read(image)
        request = requests.build(
            "Detect",
            lambda: requests.detect(
                data, model=model, version=version, conf=conf, iou=iou, max_det=max_det, classes=classes,
                imgsz=imgsz, annotate=annotate,
            ),
        )  # fmt: skip
        return Detection.from_proto(await self._call("Detect", request, timeout))

    async def models(
        self, service: str = "classifier", *, task: str = "", timeout: float | None = None
    ) -> ModelList:
        name = requests.build("ListModels", lambda: catalog_of(service))
        return ModelList.from_proto(await self._call(name, requests.list_models(task), timeout))

    async def get_job(self, job_id: str, *, timeout: float | None = None) -> Job:
        return Job.from_proto(await self._call("GetJob", trainer_pb2.GetJobRequest(job_id=job_id), timeout))

    async def cancel_job(self, job_id: str, *, timeout: float | None = None) -> Job:
        request = trainer_pb2.CancelJobRequest(job_id=job_id)
        return Job.from_proto(await self._call("CancelJob", request, timeout))

    async def list_jobs(
        self, *, page_size: int = 0, page_token: str = "", timeout: float | None = None
    ) -> JobPage:
        request = requests.build(
            "ListJobs", lambda: trainer_pb2.ListJobsRequest(page_size=page_size, page_token=page_token)
        )
        reply = await self._call("ListJobs", request, timeout)
        return JobPage(tuple(Job.from_proto(j) for j in reply.jobs), reply.next_page_token)

    async def train(self, dataset: Dataset, *, model_name: str, **options: Any) -> Job:
        """See `VisionClient.train` (the same options); the upload runs in a worker thread."""
        if self._uploader is None:
            self._uploader = VisionClient(
                trainer=self.settings.trainer_addr,
                settings=self.settings,
                tls=self._core.tls,
                metadata=self._core.extra_metadata,
            )
        return await asyncio.to_thread(self._uploader.train, dataset, model_name=model_name, **options)

    async def watch_job(
        self, job_id: str, *, after_seq: int = 0, timeout: float | None = None
    ) -> AsyncIterator[JobEvent]:
        """See `VisionClient.watch_job`."""
        method = METHODS["WatchJob"]
        self._open()
        ctx = self._core.context(method.full_name, timeout, self.settings.watch_deadline_s)
        seq, failures = after_seq, 0
        while True:
            call = self._stubs.method(method)(
                watch_request(job_id, seq), timeout=ctx.deadline.remaining(), metadata=ctx.metadata
            )
            try:
                async for message in call:
                    failures = 0
                    event = JobEvent.from_proto(message)
                    seq = event.seq
                    yield event
                    if event.ends_job:
                        return
            except grpc.aio.AioRpcError as exc:
                failures += 1
                error = from_rpc_error(
                    exc, method=method.full_name, request_id=ctx.request_id, attempts=failures
                )
                pause = next_wait(self._core.policy, error, failures, ctx.deadline, method.full_name)
                if pause is None:
                    raise error from None
                await asyncio.sleep(pause)
                continue
            finally:
                call.cancel()
            if (await self.get_job(job_id, timeout=max(MIN_ATTEMPT_S, ctx.deadline.remaining()))).state.ended:
                return

    # -- many images ----------------------------------------------------------------------------------------
    def classify_many(
        self, images: Iterable[Image], *, concurrency: int | None = None, **options: Any
    ) -> AsyncIterator[Outcome]:
        """`classify` each image, at most ``concurrency`` calls in flight (default: the setting), yielded in
        completion order; a failed image gives an `Outcome` with its error, the others go on."""
        return task_map(
            lambda image: self.classify(image, **options), images, concurrency or self.settings.concurrency
        )

    def explain_many(
        self, images: Iterable[Image], *, concurrency: int | None = None, **options: Any
    ) -> AsyncIterator[Outcome]:
        return task_map(
            lambda image: self.explain(image, **options), images, concurrency or self.settings.concurrency
        )

    def detect_many(
        self, images: Iterable[Image], *, concurrency: int | None = None, **options: Any
    ) -> AsyncIterator[Outcome]:
        return task_map(
            lambda image: self.detect(image, **options), images, concurrency or self.settings.concurrency
        )


async def _read(image: Image) -> bytes:
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    return await asyncio.to_thread(requests.read_image, image)
