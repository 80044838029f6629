"""Form and query values parsed strictly, before any protobuf is built: a value the contract cannot carry is a
400 naming the field, never an exception deep in the request (an int32 overflow used to be a 500)."""

from __future__ import annotations

import re
from typing import Any

from fastapi import File

from gateway.errors import ApiError

INT32 = range(-(2**31), 2**31)
# ASCII digits only: str.isdigit() also accepts '²' and other digits that int() refuses.
_INTEGER = re.compile(r"[+-]?[0-9]+", re.ASCII)


def bad_value(field: str, message: str) -> ApiError:
    return ApiError(400, "invalid_argument", f"{field} {message}")


def looks_like_integer(text: str) -> bool:
    """Whether ``text`` (already stripped) is written as a plain decimal integer."""
    return _INTEGER.fullmatch(text) is not None


def int32(field: str, value: int) -> int:
    """``value`` if a protobuf int32 holds it; else 400 naming ``field``."""
    if value not in INT32:
        raise bad_value(field, f"is out of range: {value} (at most {INT32.stop - 1} in magnitude)")
    return value


def parse_int32(field: str, text: str) -> int:
    """A plain decimal integer that fits an int32; 400 naming ``field`` for anything else."""
    text = text.strip()
    if not looks_like_integer(text):
        raise bad_value(field, f"must be a whole number, got {text!r}")
    if len(text.lstrip("+-")) > 10:  # never int() a thousand-digit string (CPU) only to refuse it
        raise bad_value(field, f"is out of range: {text[:20]}{'...' if len(text) > 20 else ''}")
    return int32(field, int(text))


def image_file() -> Any:
    """The ``file`` form field of the image routes: documented as non-empty, as the services require."""
    return File(description="JPEG, PNG, WebP or BMP image", json_schema_extra={"minLength": 1})
