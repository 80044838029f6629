"""vision.v1.Classifier over gRPC: validate, convert, call the engine. Errors map in `vision.rpc.status`."""

from __future__ import annotations

import time

import grpc

from classifier_svc.model import ClassifierEngine
from vision.errors import InvalidArgument
from vision.rpc.deadline import call_timeout
from vision.rpc.timing import model_ref, timing_message
from vision.v1 import classifier_pb2, classifier_pb2_grpc, common_pb2

DEFAULT_TOP_K = 5


class ClassifierServicer(classifier_pb2_grpc.ClassifierServicer):
    def __init__(self, engine: ClassifierEngine, max_top_k: int = 100) -> None:
        self._engine = engine
        self._max_top_k = max_top_k

    def Classify(
        self, request: classifier_pb2.ClassifyRequest, context: grpc.ServicerContext
    ) -> classifier_pb2.ClassifyResponse:
        start = time.perf_counter()
        top_k = request.top_k or DEFAULT_TOP_K
        if not 1 <= top_k <= self._max_top_k:
            raise InvalidArgument(f"top_k must be between 1 and {self._max_top_k}, got {request.top_k}")
        result = self._engine.classify(
            request.image,
            model_name=request.model.name,
            version=request.model.version,
            top_k=top_k,
            timeout=call_timeout(
                context, self._engine.settings.default_deadline_s, self._engine.settings.max_deadline_s
            ),
        )
        return classifier_pb2.ClassifyResponse(
            classes=[
                common_pb2.ScoredClass(class_id=i, label=label, score=s) for i, label, s in result.classes
            ],
            model=model_ref(result.answered),
            timing=timing_message(result.answered, start),
        )
