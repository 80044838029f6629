"""Assemble trainer_svc: job manager, servicers (Trainer, ModelAdmin), health, reflection."""

from __future__ import annotations

import logging

import grpc

from trainer_svc.access import Access
from trainer_svc.config import TrainerSettings
from trainer_svc.jobs.manager import JobManager
from trainer_svc.model_admin import add_model_admin
from trainer_svc.servicer import TrainerServicer
from vision.models.store import ModelStore
from vision.rpc.server import GrpcServer, create_server
from vision.v1 import trainer_pb2, trainer_pb2_grpc

log = logging.getLogger(__name__)

TRAINER_SERVICE = trainer_pb2.DESCRIPTOR.services_by_name["Trainer"].full_name


def create_trainer_server(settings: TrainerSettings) -> tuple[GrpcServer, JobManager]:
    """Open the job database (resuming interrupted jobs), start listening, report SERVING.

    Call ``manager.close()`` after stopping the server: running jobs are stopped and resume on next start.
    """
    ModelStore(settings.model_dir).check_writable()  # before anything: jobs would fail only at publishing
    manager = JobManager(settings)

    def register(server: grpc.Server) -> tuple[str, ...]:
        access = Access(settings, manager.db, manager.store)
        trainer_pb2_grpc.add_TrainerServicer_to_server(TrainerServicer(manager, settings, access), server)
        return (TRAINER_SERVICE, add_model_admin(server, manager.store, access))

    try:
        grpc_server = create_server(
            settings.address,
            register,
            max_message_bytes=settings.max_message_bytes,
            max_workers=settings.max_workers,
            max_concurrent_rpcs=settings.max_concurrent_rpcs,
            health_workers=settings.health_workers,
            health_port=settings.health_port,
            metrics_registry=manager.metrics_registry,
            metrics_port=settings.metrics_port,
            metrics_setting=settings.metrics_port_setting,
            max_connection_age_s=settings.max_connection_age_s,
            max_connection_age_grace_s=settings.max_connection_age_grace_s,
        )
    except BaseException:
        manager.close()
        raise
    manager.start()
    grpc_server.set_serving()
    log.info(
        "trainer_svc SERVING on %s:%d (%s; data %s, devices %s)",
        settings.host,
        grpc_server.port,
        grpc_server.transport,
        manager.data_dir,
        ", ".join(manager.slots),
    )
    return grpc_server, manager
