"""The Open Inference Protocol (KServe v2) over HTTP/REST: ``/v2/...``, forwarded to the services' gRPC
GRPCInferenceService (classifier_svc and detector_svc serve it on their own ports).

A model name is served by the classifier or the detector; which one is learnt from the first answer for it
(the classifier is asked first) and remembered until it says NOT_FOUND. Errors are what the specification
asks for: an HTTP error status with ``{"error": "<message>"}`` (authentication and body-size refusals,
answered before any of this runs, keep the gateway's own error body). The body is read once the size limit
of every upload route has let it through (`gateway.limits`), so a binary request is bounded before it is
buffered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from gateway.auth.context import caller_metadata
from gateway.backends import Backends, BackendsDep
from gateway.errors import ApiError, from_rpc_error
from vision.errors import InvalidArgument
from vision.oip import rest
from vision.oip.servicer import server_version
from vision.oip_pb import grpc_service_pb2 as pb

# Not in the gateway's OpenAPI: these routes answer as the OIP REST specification says (its own schema,
# open_inference_rest.yaml; errors as {"error": "..."}), not with the gateway's models and ErrorBody.
router = APIRouter(prefix="/v2", tags=["open inference protocol"], include_in_schema=False)
SERVICES = ("classifier", "detector")  # the services that speak the protocol, asked in this order
EXTENSIONS = ("classification", "binary_tensor_data")
Reply = TypeVar("Reply")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _deployed(backends: Backends) -> list[str]:
    return [s for s in SERVICES if s in backends.channels]


async def _call(backends: Backends, method: Callable[..., Awaitable[Reply]], request: Any) -> Reply:
    return await method(request, timeout=backends.settings.timeout_s, metadata=caller_metadata())


async def _routed(
    backends: Backends, model: str, call: Callable[[str], Awaitable[Reply]]
) -> tuple[str, Reply]:
    """``call(service)`` on the service that serves ``model``: the remembered one, else each in turn while
    they answer NOT_FOUND (the last NOT_FOUND is the answer when none serves it)."""
    deployed = _deployed(backends)
    if not deployed:
        raise ApiError(503, "not_deployed", "neither the classifier nor the detector is deployed here")
    known = backends.oip_routes.get(model)
    order = ([known] if known in deployed else []) + [s for s in deployed if s != known]
    missing: grpc.aio.AioRpcError | None = None
    for service in order:
        try:
            reply = await call(service)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise from_rpc_error(exc, service, backends.settings.retry_after_s) from exc
            backends.oip_routes.pop(model, None)
            missing = exc
            continue
        backends.oip_routes[model] = service
        return service, reply
    assert missing is not None
    raise from_rpc_error(missing, order[-1], backends.settings.retry_after_s) from missing


async def _answered(work: Awaitable[Response]) -> Response:
    """``work``'s response, or its failure as the specification's error body."""
    try:
        return await work
    except ApiError as exc:
        return _error(exc.status, exc.message, exc.headers)
    except InvalidArgument as exc:
        return _error(400, exc.message)


@router.get("/health/live", summary="The gateway is live (OIP server live)")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", summary="Every OIP service behind the gateway is ready (200), else 400")
async def ready(backends: BackendsDep) -> Response:
    async def ask(service: str) -> bool:
        try:
            reply = await _call(backends, backends.oip(service).ServerReady, pb.ServerReadyRequest())
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.ready)

    services = _deployed(backends)
    answers = await asyncio.gather(*(ask(s) for s in services))
    ok = bool(services) and all(answers)
    return JSONResponse({"ready": ok}, status_code=200 if ok else 400)


@router.get("", summary="OIP server metadata")
async def server_metadata() -> dict[str, Any]:
    return {"name": "vision", "version": server_version(), "extensions": list(EXTENSIONS)}


async def _model_metadata(backends: Backends, name: str, version: str) -> Response:
    request = pb.ModelMetadataRequest(name=name, version=version)
    _, reply = await _routed(
        backends, name, lambda s: _call(backends, backends.oip(s).ModelMetadata, request)
    )
    return JSONResponse(rest.model_metadata(reply))


@router.get("/models/{name}", summary="OIP model metadata (the served version)")
async def model_metadata(backends: BackendsDep, name: str) -> Response:
    return await _answered(_model_metadata(backends, name, ""))


@router.get("/models/{name}/versions/{version}", summary="OIP model metadata of one version")
async def version_metadata(backends: BackendsDep, name: str, version: str) -> Response:
    return await _answered(_model_metadata(backends, name, version))


async def _model_ready(backends: Backends, name: str, version: str) -> Response:
    request = pb.ModelReadyRequest(name=name, version=version)
    answers = await asyncio.gather(
        *(_call(backends, backends.oip(s).ModelReady, request) for s in _deployed(backends)),
        return_exceptions=True,
    )
    ok = any(isinstance(a, pb.ModelReadyResponse) and a.ready for a in answers)
    return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 400)


@router.get("/models/{name}/ready", summary="The model is ready (200), else 400")
async def model_ready(backends: BackendsDep, name: str) -> Response:
    return await _model_ready(backends, name, "")


@router.get("/models/{name}/versions/{version}/ready", summary="The model version is ready (200), else 400")
async def version_ready(backends: BackendsDep, name: str, version: str) -> Response:
    return await _model_ready(backends, name, version)


async def _infer(backends: Backends, request: Request, name: str, version: str) -> Response:
    if request.headers.get("content-encoding", "identity") != "identity":
        raise InvalidArgument("compressed request bodies are not accepted; send the body uncompressed")
    body = await request.body()
    header_length = request.headers.get(rest.HEADER_LENGTH)
    max_elements = backends.settings.max_message_bytes

    def convert() -> tuple[pb.ModelInferRequest, rest.OutputFormat]:
        header, binary = rest.split_body(body, header_length)
        return rest.infer_request(header, binary, name, version, max_elements=max_elements)

    # A large JSON body takes a second or more to parse and convert: off the event loop, so the gateway's
    # other requests (health checks included) are not held up by it.
    grpc_request, fmt = await asyncio.to_thread(convert)
    _, reply = await _routed(
        backends, name, lambda s: _call(backends, backends.oip(s).ModelInfer, grpc_request)
    )
    json_part, binary_part = rest.infer_response(reply, fmt)
    if not binary_part:
        return Response(json_part, media_type="application/json")
    return Response(
        json_part + binary_part,
        media_type="application/octet-stream",
        headers={rest.HEADER_LENGTH: str(len(json_part))},
    )


@router.post("/models/{name}/infer", summary="OIP inference (JSON, or JSON plus binary tensor data)")
async def infer(backends: BackendsDep, request: Request, name: str) -> Response:
    return await _answered(_infer(backends, request, name, ""))


@router.post("/models/{name}/versions/{version}/infer", summary="OIP inference on one model version")
async def version_infer(backends: BackendsDep, request: Request, name: str, version: str) -> Response:
    return await _answered(_infer(backends, request, name, version))
