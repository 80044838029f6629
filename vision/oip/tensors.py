"""Tensors of the Open Inference Protocol: datatypes, the raw (binary) layout, and the typed contents.

Raw layout (gRPC ``raw_*_contents``, the HTTP binary tensor extension): the elements flattened row-major,
little-endian, no padding; a BYTES element is a 4-byte little-endian length followed by its bytes. Every
check runs before anything is allocated for the tensor, and each failure is an `InvalidArgument` that names
the tensor and says what was expected.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vision.errors import InvalidArgument

BYTES = "BYTES"
FP32 = "FP32"
INT32 = "INT32"

# Numeric datatypes: (numpy dtype, the InferTensorContents field that holds them). FP16/BF16 travel raw only.
NUMERIC: dict[str, tuple[str, str | None]] = {
    "BOOL": ("?", "bool_contents"),
    "UINT8": ("<u1", "uint_contents"),
    "UINT16": ("<u2", "uint_contents"),
    "UINT32": ("<u4", "uint_contents"),
    "UINT64": ("<u8", "uint64_contents"),
    "INT8": ("<i1", "int_contents"),
    "INT16": ("<i2", "int_contents"),
    "INT32": ("<i4", "int_contents"),
    "INT64": ("<i8", "int64_contents"),
    "FP16": ("<f2", None),
    "FP32": ("<f4", "fp32_contents"),
    "FP64": ("<f8", "fp64_contents"),
}
DATATYPES = (*NUMERIC, BYTES)
_LENGTH = struct.Struct("<I")


@dataclass(frozen=True)
class Tensor:
    """A decoded tensor: ``data`` is a numpy array of ``shape`` (numeric) or its elements, flattened
    (BYTES)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray | list[bytes]

    @property
    def elements(self) -> list[bytes]:
        """The elements of a BYTES tensor (an `InvalidArgument` for any other datatype)."""
        if not isinstance(self.data, list):
            raise InvalidArgument(f"input {self.name!r} must be BYTES, got {self.datatype}")
        return self.data

    @property
    def array(self) -> np.ndarray:
        """The array of a numeric tensor (an `InvalidArgument` for BYTES)."""
        if isinstance(self.data, list):
            raise InvalidArgument(f"input {self.name!r} must be numeric, got BYTES")
        return self.data


def check_shape(name: str, shape: Sequence[int], max_elements: int) -> tuple[int, ...]:
    """``shape`` as a tuple of non-negative ints whose product is at most ``max_elements``."""
    dims = tuple(int(d) for d in shape)
    if any(d < 0 for d in dims):
        raise InvalidArgument(f"input {name!r}: shape {list(dims)} has a negative dimension")
    # Zero-sized dimensions count as 1: a shape like [0, 2**62] holds no element but cannot be allocated.
    count = math.prod(max(d, 1) for d in dims)
    if count > max_elements:
        raise InvalidArgument(
            f"input {name!r}: shape {list(dims)} has {count} elements, more than the {max_elements} accepted"
        )
    return dims


def check_datatype(name: str, datatype: str) -> str:
    if datatype not in DATATYPES:
        raise InvalidArgument(f"input {name!r}: unknown datatype {datatype!r}; one of {', '.join(DATATYPES)}")
    return datatype


def parse_bytes(name: str, raw: bytes, count: int) -> list[bytes]:
    """The ``count`` length-prefixed elements of a raw BYTES tensor; the lengths must account for every
    byte."""
    elements: list[bytes] = []
    view = memoryview(raw)
    offset = 0
    for _ in range(count):
        if offset + 4 > len(raw):
            raise InvalidArgument(
                f"input {name!r}: raw BYTES data ends after {len(elements)} of {count} elements "
                "(each element is a 4-byte little-endian length, then that many bytes)"
            )
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidArgument(
                f"input {name!r}: BYTES element {len(elements)} declares {length} bytes, "
                f"only {len(raw) - offset} remain"
            )
        elements.append(bytes(view[offset : offset + length]))
        offset += length
    if offset != len(raw):
        raise InvalidArgument(
            f"input {name!r}: {len(raw) - offset} bytes left over after the {count} BYTES elements "
            "of its shape"
        )
    return elements


def serialize_bytes(elements: Sequence[bytes]) -> bytes:
    """Raw layout of BYTES elements: each one's 4-byte little-endian length, then the element."""
    return b"".join(_LENGTH.pack(len(e)) + e for e in elements)


def from_raw(name: str, datatype: str, shape: Sequence[int], raw: bytes, max_elements: int) -> Tensor:
    """A tensor from its raw layout; its size must be exactly what ``shape`` and ``datatype`` say."""
    check_datatype(name, datatype)
    dims = check_shape(name, shape, max_elements)
    count = math.prod(dims)
    if datatype == BYTES:
        return Tensor(name, datatype, dims, parse_bytes(name, raw, count))
    dtype = np.dtype(NUMERIC[datatype][0])
    if len(raw) != count * dtype.itemsize:
        raise InvalidArgument(
            f"input {name!r}: {datatype} shape {list(dims)} needs {count * dtype.itemsize} bytes, "
            f"got {len(raw)}"
        )
    return Tensor(name, datatype, dims, np.frombuffer(raw, dtype=dtype).reshape(dims))


def from_values(name: str, datatype: str, shape: Sequence[int], values: Any, max_elements: int) -> Tensor:
    """A tensor from a flat sequence of its elements (typed gRPC contents, JSON ``data``)."""
    check_datatype(name, datatype)
    dims = check_shape(name, shape, max_elements)
    count = math.prod(dims)
    if len(values) != count:
        raise InvalidArgument(
            f"input {name!r}: shape {list(dims)} has {count} elements, the data holds {len(values)}"
        )
    if datatype == BYTES:
        return Tensor(name, datatype, dims, [bytes(v) for v in values])
    if NUMERIC[datatype][1] is None:
        raise InvalidArgument(f"input {name!r}: {datatype} data must be sent raw (binary)")
    try:
        array = np.asarray(values, dtype=np.dtype(NUMERIC[datatype][0]))
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidArgument(f"input {name!r}: the data is not {datatype} ({exc})") from None
    return Tensor(name, datatype, dims, array.reshape(dims))


def to_raw(datatype: str, data: np.ndarray | Sequence[bytes]) -> bytes:
    """The raw layout of an output's data (numeric: cast to the datatype's little-endian dtype)."""
    if datatype == BYTES:
        return serialize_bytes(list(data))  # type: ignore[arg-type]
    return np.ascontiguousarray(data, dtype=np.dtype(NUMERIC[datatype][0])).tobytes()


def classification(probs: np.ndarray, k: int, labels: Sequence[str]) -> np.ndarray:
    """Triton's classification extension: for each row of ``probs`` (N, C), the ``k`` best classes (clamped
    to C), best first, as ``b"score:index:label"`` (score as C's ``%f``); an array of shape (N, k)."""
    k = min(k, probs.shape[1])
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    rows = [
        [f"{float(row[i]):f}:{int(i)}:{labels[int(i)]}".encode() for i in top]
        for row, top in zip(probs, order, strict=True)
    ]
    out = np.empty((probs.shape[0], k), dtype=object)
    for n, row in enumerate(rows):
        out[n, :] = row
    return out
