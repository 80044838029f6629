"""Runs a plan of calls with Triton's own gRPC client, in a process of its own:
``python -m tests.support.triton_grpc ADDRESS < plan.json`` prints one JSON result per step.

Why a process of its own: tritonclient.grpc registers Triton's ``grpc_service.proto`` (package
``inference``) in protobuf's default descriptor pool, and so do our services (vision/oip_pb, the same
package); one process cannot hold both. A real OIP client is another process anyway. This module imports
nothing of ours, so it runs beside the test process that serves.

A step: {"op": "live" | "ready" | "server_metadata" | "model_ready" | "model_metadata" | "infer", "model",
"version", "inputs": [{"name", "datatype", "shape", "b64": [...]} or {..., "npy": path}], "outputs":
[{"name", "class_count"}], "parameters": {...}, "raw": bool}. A result: {"ok": ...} or
{"error": {"status": "StatusCode.X", "message": ...}}.
"""

from __future__ import annotations

import base64
import json
import sys
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from google.protobuf.json_format import MessageToDict
from tritonclient.utils import InferenceServerException


def inputs_of(step: dict[str, Any]) -> list[grpcclient.InferInput]:
    inputs = []
    for spec in step.get("inputs", []):
        tensor = grpcclient.InferInput(spec["name"], spec["shape"], spec["datatype"])
        if "npy" in spec:
            tensor.set_data_from_numpy(np.load(spec["npy"]))
        elif "b64" in spec:
            elements = [base64.b64decode(e) for e in spec["b64"]]
            tensor.set_data_from_numpy(np.array(elements, dtype=np.object_).reshape(spec["shape"]))
        inputs.append(tensor)
    return inputs


def infer(client: grpcclient.InferenceServerClient, step: dict[str, Any]) -> dict[str, Any]:
    outputs = [
        grpcclient.InferRequestedOutput(o["name"], class_count=o.get("class_count", 0))
        for o in step.get("outputs", [])
    ]
    result = client.infer(
        step["model"],
        inputs_of(step),
        model_version=step.get("version", ""),
        outputs=outputs or None,
        request_id=step.get("id", ""),
        parameters=step.get("parameters"),
        client_timeout=60,
    )
    response = result.get_response()
    arrays = {}
    for output in response.outputs:
        array = result.as_numpy(output.name)
        if array.dtype == np.object_:
            array = np.vectorize(lambda b: b.decode())(array) if array.size else array
        arrays[output.name] = {
            "datatype": output.datatype,
            "shape": list(array.shape),
            "data": array.tolist(),
        }
    return {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "id": response.id,
        "outputs": arrays,
    }


def run(client: grpcclient.InferenceServerClient, step: dict[str, Any]) -> Any:
    op = step["op"]
    if op == "live":
        return client.is_server_live()
    if op == "ready":
        return client.is_server_ready()
    if op == "server_metadata":
        return MessageToDict(client.get_server_metadata(), preserving_proto_field_name=True)
    if op == "model_ready":
        return client.is_model_ready(step["model"], step.get("version", ""))
    if op == "model_metadata":
        reply = client.get_model_metadata(step["model"], step.get("version", ""))
        return MessageToDict(reply, preserving_proto_field_name=True)
    if op == "infer":
        return infer(client, step)
    raise ValueError(f"unknown op {op!r}")


def main() -> None:
    address = sys.argv[1]
    plan = json.load(sys.stdin)
    results = []
    with grpcclient.InferenceServerClient(address) as client:
        for step in plan:
            try:
                results.append({"ok": run(client, step)})
            except InferenceServerException as exc:
                results.append({"error": {"status": exc.status(), "message": exc.message()}})
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
