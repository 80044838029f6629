"""The Open Inference Protocol's HTTP/REST binding: JSON (plus Triton's binary tensor data extension) to
and from the gRPC messages, so the gateway forwards REST requests to the services' GRPCInferenceService.

Request body: a JSON object, optionally followed by binary tensor data; ``Inference-Header-Content-Length``
then gives the JSON's size, and each binary input says its size in ``parameters.binary_data_size`` (in input
order). A JSON input gives its elements in ``data`` (nested or flat, row-major); a BYTES element there is a
string: its UTF-8 bytes, or, with the input parameter ``"content_type": "base64"``, the bytes it encodes
(how an image travels in plain JSON). Outputs come back in JSON unless asked for as binary (the output
parameter ``binary_data``, or the request parameter ``binary_data_output`` for all of them).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vision.errors import InvalidArgument
from vision.oip.servicer import CLASSIFICATION, parameter_message, parameter_value
from vision.oip.tensors import BYTES, NUMERIC, from_values, parse_bytes, to_raw
from vision.oip_pb import grpc_service_pb2 as pb

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_SIZE, BINARY, BINARY_OUTPUT, CONTENT_TYPE = (
    "binary_data_size",
    "binary_data",
    "binary_data_output",
    "content_type",
)


@dataclass(frozen=True)
class OutputFormat:
    """Which outputs go back as binary data: those named, or every one when ``all_binary``."""

    all_binary: bool = False
    binary: frozenset[str] = frozenset()
    json_only: frozenset[str] = field(default_factory=frozenset)

    def is_binary(self, name: str) -> bool:
        return name in self.binary or (self.all_binary and name not in self.json_only)


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what} must be a JSON object")
    return value


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    for item in data:
        flat.extend(_flatten(item))
    return flat


def split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """The JSON object and the binary data after it (``header_length``: the header's value, if sent)."""
    size = len(body)
    if header_length is not None:
        digits = header_length.isascii() and header_length.isdigit() and len(header_length) <= 19
        if not digits or not 0 < int(header_length) <= len(body):
            raise InvalidArgument(
                f"{HEADER_LENGTH} must be the JSON's size in bytes, 1 to {len(body)}, got {header_length!r}"
            )
        size = int(header_length)
    try:
        header = json.loads(body[:size])
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidArgument(f"the request is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidArgument("the request's JSON is nested too deeply") from None
    return _object(header, "the request"), body[size:]


def _parameters(value: Any, what: str) -> dict[str, Any]:
    params = _object(value if value is not None else {}, f"{what} parameters")
    for key, item in params.items():
        if not isinstance(item, bool | int | float | str):
            raise InvalidArgument(f"{what} parameter {key!r} must be a boolean, number or string")
    return params


def _input_raw(item: dict[str, Any], binary: bytes, offset: int, max_elements: int) -> tuple[bytes, int]:
    """The raw contents of one input (from the binary data at ``offset``, or its JSON ``data``)."""
    name, datatype, shape = item.get("name"), item.get("datatype"), item.get("shape")
    if not isinstance(name, str) or not isinstance(datatype, str) or not isinstance(shape, list):
        raise InvalidArgument("each input needs a name, a datatype and a shape")
    if not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise InvalidArgument(f"input {name!r}: shape must be a list of integers")
    params = _parameters(item.get("parameters"), f"input {name!r}")
    if BINARY_SIZE in params:
        size = params[BINARY_SIZE]
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= len(binary) - offset:
            raise InvalidArgument(
                f"input {name!r}: binary_data_size {size!r} does not fit the {len(binary) - offset} bytes of "
                "binary data left"
            )
        return binary[offset : offset + size], offset + size
    if "data" not in item:
        raise InvalidArgument(f"input {name!r} has neither data nor binary_data_size")
    values = _flatten(item["data"])
    if datatype == BYTES:
        if not all(isinstance(v, str) for v in values):
            raise InvalidArgument(f"input {name!r}: BYTES elements in JSON are strings")
        try:
            elements = (
                [base64.b64decode(v, validate=True) for v in values]
                if params.get(CONTENT_TYPE) == "base64"
                else [v.encode() for v in values]
            )
        except binascii.Error as exc:
            raise InvalidArgument(f"input {name!r}: an element is not valid base64 ({exc})") from None
        values = elements
    tensor = from_values(name, datatype, shape, values, max_elements)
    return to_raw(datatype, tensor.data if isinstance(tensor.data, list) else tensor.data.reshape(-1)), offset


def infer_request(
    header: dict[str, Any], binary: bytes, model_name: str, model_version: str, max_elements: int
) -> tuple[pb.ModelInferRequest, OutputFormat]:
    """The gRPC request for a REST inference request, and how its outputs are to be sent back."""
    try:
        return _infer_request(header, binary, model_name, model_version, max_elements)
    except UnicodeEncodeError:  # JSON may carry lone surrogates ("\ud800"): no UTF-8 string holds them
        raise InvalidArgument("a string in the request holds an unpaired UTF-16 surrogate") from None


def _infer_request(
    header: dict[str, Any], binary: bytes, model_name: str, model_version: str, max_elements: int
) -> tuple[pb.ModelInferRequest, OutputFormat]:
    inputs = header.get("inputs")
    if not isinstance(inputs, list):
        raise InvalidArgument("the request needs an 'inputs' list")
    request = pb.ModelInferRequest(model_name=model_name, model_version=model_version)
    request_id = header.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidArgument("id must be a string")
    request.id = request_id
    params = _parameters(header.get("parameters"), "request")
    for key, value in params.items():
        if key != BINARY_OUTPUT:
            request.parameters[key].CopyFrom(parameter_message(value))
    offset = 0
    for item in inputs:
        item = _object(item, "each input")
        raw, offset = _input_raw(item, binary, offset, max_elements)
        request.inputs.add(name=item["name"], datatype=item["datatype"], shape=item["shape"])
        request.raw_input_contents.append(raw)
    if offset != len(binary):
        raise InvalidArgument(f"{len(binary) - offset} bytes of binary data after the inputs belong to none")
    binary_outputs: set[str] = set()
    json_outputs: set[str] = set()
    outputs = header.get("outputs", [])
    if not isinstance(outputs, list):
        raise InvalidArgument("outputs must be a list of {name, parameters} objects")
    for item in outputs:
        item = _object(item, "each output")
        name = item.get("name")
        if not isinstance(name, str):
            raise InvalidArgument("each output needs a name")
        out_params = _parameters(item.get("parameters"), f"output {name!r}")
        wanted = request.outputs.add(name=name)
        if CLASSIFICATION in out_params:
            wanted.parameters[CLASSIFICATION].CopyFrom(parameter_message(out_params[CLASSIFICATION]))
        (binary_outputs if out_params.get(BINARY) is True else json_outputs).add(name)
    all_binary = params.get(BINARY_OUTPUT) is True
    return request, OutputFormat(all_binary, frozenset(binary_outputs), frozenset(json_outputs))


def _json_data(datatype: str, raw: bytes, count: int) -> list[Any]:
    if datatype == BYTES:
        elements = parse_bytes("output", raw, count)
        try:
            return [e.decode() for e in elements]
        except UnicodeDecodeError:
            raise InvalidArgument("a BYTES output is not UTF-8 text: ask for it as binary data") from None
    values: list[Any] = np.frombuffer(raw, dtype=np.dtype(NUMERIC[datatype][0])).tolist()
    return values


def infer_response(response: pb.ModelInferResponse, fmt: OutputFormat) -> tuple[bytes, bytes]:
    """The JSON of a REST inference response, and the binary data to send after it (b"" when none)."""
    outputs, binary = [], []
    for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        output: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        if fmt.is_binary(tensor.name):
            output["parameters"] = {BINARY_SIZE: len(raw)}
            binary.append(raw)
        else:
            output["data"] = _json_data(tensor.datatype, raw, int(np.prod(tensor.shape)))
        outputs.append(output)
    body: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id:
        body["id"] = response.id
    if response.parameters:
        body["parameters"] = {k: parameter_value(v) for k, v in response.parameters.items()}
    body["outputs"] = outputs
    return json.dumps(body).encode(), b"".join(binary)


def model_metadata(reply: pb.ModelMetadataResponse) -> dict[str, Any]:
    def tensors(items: Sequence[pb.ModelMetadataResponse.TensorMetadata]) -> list[dict[str, Any]]:
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]

    return {
        "name": reply.name,
        "versions": list(reply.versions),
        "platform": reply.platform,
        "inputs": tensors(reply.inputs),
        "outputs": tensors(reply.outputs),
    }
