"""The Open Inference Protocol contract (protos/inference, generated into vision/oip_pb;
tests/test_contracts.py checks it is not stale) is wire-compatible with Triton's own client (the same
package, messages, field numbers and types, RPCs)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2

from vision.oip_pb import grpc_service_pb2


def tritonclient_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """tritonclient's own grpc_service.proto, read from its generated module's source (importing it would
    register package ``inference`` a second time in this process)."""
    import tritonclient

    source = (Path(tritonclient.__file__).parent / "grpc" / "service_pb2.py").read_text()
    call = next(
        n
        for n in ast.walk(ast.parse(source))
        if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "AddSerializedFile"
    )
    assert isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, bytes)
    return descriptor_pb2.FileDescriptorProto.FromString(call.args[0].value)


def messages(file: descriptor_pb2.FileDescriptorProto) -> dict[str, descriptor_pb2.DescriptorProto]:
    found: dict[str, descriptor_pb2.DescriptorProto] = {}

    def walk(prefix: str, items: Any) -> None:
        for message in items:
            found[f"{prefix}.{message.name}"] = message
            walk(f"{prefix}.{message.name}", message.nested_type)

    walk(f".{file.package}", file.message_type)
    return found


@pytest.mark.fast
def test_messages_and_rpcs_are_wire_compatible_with_tritonclients_descriptors() -> None:
    ours = descriptor_pb2.FileDescriptorProto()
    grpc_service_pb2.DESCRIPTOR.CopyToProto(ours)
    theirs = tritonclient_descriptor()
    assert ours.package == theirs.package == "inference"
    our_messages, their_messages = messages(ours), messages(theirs)
    assert len(our_messages) == 23 and set(our_messages) <= set(their_messages)

    def fields(message: descriptor_pb2.DescriptorProto) -> dict[str, tuple[Any, ...]]:
        return {
            f.name: (
                f.number,
                f.type,
                f.label,
                f.type_name,
                f.oneof_index if f.HasField("oneof_index") else None,
            )
            for f in message.field
        }

    for name, message in our_messages.items():
        assert fields(message) == fields(their_messages[name]), name
        assert message.options.map_entry == their_messages[name].options.map_entry, name
    (service,) = ours.service
    (triton,) = [s for s in theirs.service if s.name == service.name == "GRPCInferenceService"]
    triton_methods = {
        m.name: (m.input_type, m.output_type, m.client_streaming, m.server_streaming) for m in triton.method
    }
    our_methods = {
        m.name: (m.input_type, m.output_type, m.client_streaming, m.server_streaming) for m in service.method
    }
    assert set(our_methods) == {
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
    }
    assert all(our_methods[m] == triton_methods[m] for m in our_methods)
