"""vision.v1.Trainer over gRPC: validate, convert, hand to the JobManager. Errors: `vision.rpc.status`."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc

from trainer_svc import convert
from trainer_svc.access import Access, upload_quota_exceeded
from trainer_svc.config import TrainerSettings
from trainer_svc.errors import is_disk_full
from trainer_svc.jobs.database import JobRow
from trainer_svc.jobs.manager import JobManager
from trainer_svc.jobs.uploads import UploadTooLarge, UploadWriter
from trainer_svc.training.config import TrainConfig
from trainer_svc.training.data import check_min_per_class, load_image_folder
from trainer_svc.training.publishing import ensure_imagenet, read_report
from vision.errors import Cancelled, InvalidArgument, Overloaded, StorageFull
from vision.security.principal import Principal
from vision.security.roles import Role
from vision.settings import MAX_JOBS_PAGE_SIZE, MAX_PAGE_TOKEN_DIGITS
from vision.telemetry.tracing import span
from vision.v1 import trainer_pb2, trainer_pb2_grpc

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = MAX_JOBS_PAGE_SIZE
WATCH_POLL_S = 1.0


class UploadCancelled(Cancelled):
    """The client went away mid-upload; nothing was kept."""


class TooManyStreams(Overloaded):
    """As many uploads (or watchers) as the trainer takes at once are open already."""


class UploadDiskFull(StorageFull):
    """The trainer's data volume filled up while an upload was stored; nothing was kept."""


class StreamSlots:
    """At most ``limit`` streams of one kind at once: each holds a handler thread for as long as it is open,
    so capping them keeps threads free for health checks and unary calls. Beyond: `TooManyStreams` at once."""

    def __init__(self, limit: int, what: str, setting: str) -> None:
        self.limit, self.what, self.setting = limit, what, setting
        self._free = threading.BoundedSemaphore(limit)

    @contextmanager
    def hold(self) -> Iterator[None]:
        if not self._free.acquire(blocking=False):
            raise TooManyStreams(
                f"the trainer already has {self.limit} {self.what} open, its limit ({self.setting}): "
                "retry in a moment"
            )
        try:
            yield
        finally:
            self._free.release()


def page_start(token: str) -> int:
    """The job seq a ListJobs ``page_token`` starts before (0: from the newest). A token is the
    ``next_page_token`` of an earlier page: ASCII digits, at most `MAX_PAGE_TOKEN_DIGITS` (any such number
    is a valid database key); anything else is `InvalidArgument`, never a failed query."""
    if not token:
        return 0
    if len(token) > MAX_PAGE_TOKEN_DIGITS or not (token.isascii() and token.isdigit()):
        raise InvalidArgument(
            f"page_token must be the next_page_token of an earlier page (at most {MAX_PAGE_TOKEN_DIGITS} "
            "digits); leave it empty for the first page"
        )
    return int(token)


class TrainerServicer(trainer_pb2_grpc.TrainerServicer):
    def __init__(self, manager: JobManager, settings: TrainerSettings, access: Access | None = None) -> None:
        self._manager = manager
        self._settings = settings
        self._access = access or Access(settings, manager.db, manager.store)
        self._uploads = StreamSlots(
            settings.max_concurrent_uploads, "job uploads", "VISION_TRAINER_MAX_CONCURRENT_UPLOADS"
        )
        self._watchers = StreamSlots(settings.max_watchers, "job watchers", "VISION_TRAINER_MAX_WATCHERS")

    def _check_dataset(self, config: TrainConfig) -> dict[str, int]:
        """Fail before any upload or queueing: pretrained weights present (or fetched), folders usable."""
        if config.pretrained:
            s = self._settings
            ensure_imagenet(
                self._manager.store, config.architecture, url=s.pretrained_url, timeout=s.pretrained_timeout_s
            )
        if config.dataset == "image_folder":
            split = load_image_folder(
                Path(config.dataset_path),
                config.val_fraction,
                config.seed,
                self._settings.min_images_per_class,
                within=self._settings.image_folder_root,
            )
            return split.class_counts()
        return {}

    def _receive_upload(
        self, requests: Iterator[trainer_pb2.CreateJobRequest], config: TrainConfig, caller: Principal
    ) -> tuple[UploadWriter, dict[str, int]]:
        allowance = self._access.upload_allowance(caller)  # None: no daily quota
        writer = self._manager.new_upload(config.class_names, allowance)
        try:
            with span("upload") as receiving:
                for request in requests:
                    if not request.HasField("chunk"):
                        raise InvalidArgument("only image chunks may follow the JobSpec")
                    writer.add(request.chunk)
                per_label = writer.finish()
                if receiving is not None:
                    receiving.set_attribute("upload.bytes", writer.total_bytes)
                    receiving.set_attribute("upload.images", sum(per_label.values()))
            counts = {config.class_names[i]: n for i, n in per_label.items()}
            check_min_per_class(counts, self._settings.min_images_per_class)
            return writer, counts
        except grpc.RpcError as exc:  # the client went away (or cancelled) mid-upload
            writer.abort()
            raise UploadCancelled("the upload was cancelled before it finished; nothing was kept") from exc
        except UploadTooLarge as exc:
            writer.abort()
            if allowance is not None and writer.total_bytes > allowance:
                limit = caller.limits.max_upload_bytes_per_day
                raise upload_quota_exceeded(caller, limit) from exc
            raise
        except BaseException:
            writer.abort()
            raise
        finally:  # what arrived counts, kept or not: a failed upload cannot be retried for free forever
            self._access.record_upload(caller, writer.total_bytes)
            self._manager.telemetry.upload_bytes.inc(writer.total_bytes)

    def CreateJob(
        self, request_iterator: Iterator[trainer_pb2.CreateJobRequest], context: grpc.ServicerContext
    ) -> trainer_pb2.Job:
        caller = self._access.caller(context)
        Access.require(caller, Role.TRAINER, "creating a training job")
        with self._uploads.hold():  # before the first message: an idle stream holds a thread too
            try:
                return self._create_job(request_iterator, caller)
            except OSError as exc:  # what was stored is removed already (UploadWriter.abort)
                if is_disk_full(exc):
                    log.error("CreateJob: the data volume is full: %s", exc)
                    raise UploadDiskFull(
                        "the trainer's disk is full: the upload was not kept; retry later or with fewer "
                        "images"
                    ) from exc
                raise

    def _create_job(
        self, request_iterator: Iterator[trainer_pb2.CreateJobRequest], caller: Principal
    ) -> trainer_pb2.Job:
        first = next(request_iterator, None)
        if first is None or not first.HasField("spec"):
            raise InvalidArgument("the first CreateJob message must be the JobSpec")
        config = convert.job_spec_to_config(first.spec, self._settings, self._manager.placement)
        spec = convert.spec_to_json(first.spec)
        # Quotas and the model name first: a refused job uploads nothing.
        self._access.check_active_jobs(caller)
        self._access.claim_model_name(caller, config.model_name, claim=False)
        counts = self._check_dataset(config)
        writer = None
        if config.dataset != "upload":
            if next(request_iterator, None) is not None:
                raise InvalidArgument(f"a {config.dataset} job takes no uploaded images")
        else:
            writer, counts = self._receive_upload(request_iterator, config, caller)
        try:
            self._access.claim_model_name(caller, config.model_name)
            with span("submit job", **{"job.dataset": config.dataset, "job.model_name": config.model_name}):
                row = self._manager.submit(
                    spec, config, counts, writer, owner=caller.name, max_active=caller.limits.max_active_jobs
                )
            return convert.job_proto(row)
        except BaseException:
            if writer is not None:
                writer.abort()
            raise

    def _visible(self, job_id: str, context: grpc.ServicerContext) -> tuple[Principal, JobRow]:
        """The caller and the job, if the caller may see it (else NOT_FOUND, as for no such job)."""
        caller = self._access.caller(context)
        Access.require(caller, Role.TRAINER, "reading training jobs")
        return caller, self._access.visible_job(caller, self._manager.db.get(job_id), job_id)

    def GetJob(self, request: trainer_pb2.GetJobRequest, context: grpc.ServicerContext) -> trainer_pb2.Job:
        return convert.job_proto(self._visible(request.job_id, context)[1])

    def ListJobs(
        self, request: trainer_pb2.ListJobsRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.ListJobsResponse:
        size = request.page_size or DEFAULT_PAGE_SIZE
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise InvalidArgument(f"page_size must be between 1 and {MAX_PAGE_SIZE}, got {request.page_size}")
        caller = self._access.caller(context)
        Access.require(caller, Role.TRAINER, "listing training jobs")
        owner = None if caller.is_admin else caller.name  # admins see every job, others their own
        rows = self._manager.db.page(size, page_start(request.page_token), owner)
        next_token = str(rows[-1].seq) if len(rows) == size and rows[-1].seq > 1 else ""
        return trainer_pb2.ListJobsResponse(
            jobs=[convert.job_proto(row) for row in rows], next_page_token=next_token
        )

    def CancelJob(
        self, request: trainer_pb2.CancelJobRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.Job:
        self._visible(request.job_id, context)
        return convert.job_proto(self._manager.cancel(request.job_id))

    def WatchJob(
        self, request: trainer_pb2.WatchJobRequest, context: grpc.ServicerContext
    ) -> Iterator[trainer_pb2.JobEvent]:
        """Every event after ``after_seq`` (0: all so far), then new ones as they happen, until the job has
        ended or the stream has been open ``watch_max_s`` (then it ends with OK: the client watches again)."""
        if request.after_seq < 0:
            raise InvalidArgument(f"after_seq must be 0 or the seq of an event, got {request.after_seq}")
        with self._watchers.hold():
            self._visible(request.job_id, context)  # JobNotFound before the stream starts
            seq = request.after_seq
            ends = time.monotonic() + self._settings.watch_max_s
            while context.is_active():
                row = self._manager.db.get(request.job_id)
                events = self._manager.db.events_after(request.job_id, seq)
                for number, event in events:
                    seq = number
                    yield convert.event_proto(request.job_id, event, number)
                if row is None or row.terminal:  # its final STATE event was committed with the state: sent
                    return
                left = ends - time.monotonic()
                if left <= 0:
                    return
                if not events:
                    self._manager.records.wait_for_change(min(WATCH_POLL_S, left))

    def GetModelReport(
        self, request: trainer_pb2.GetModelReportRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.GetModelReportResponse:
        if not request.model.name:
            raise InvalidArgument("model.name is required: the model whose training report you want")
        version = self._manager.store.get(request.model.name, request.model.version)
        return convert.report_proto(read_report(version), version)
