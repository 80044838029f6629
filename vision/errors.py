"""Domain errors, raised deep in the code and turned into a gRPC status in one place (`grpc_status`).

Each carries the message a user reads: what was wrong and what to do about it.
"""

from __future__ import annotations

import grpc


class VisionError(Exception):
    """Base of every error a caller is meant to see."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(VisionError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class InvalidImage(InvalidArgument):
    """The bytes are not a complete, decodable image."""


class UnsupportedImageFormat(InvalidImage):
    """A real image, but not one of the accepted formats."""


class ImageTooLarge(InvalidImage):
    """Too many bytes or too many pixels (e.g. a decompression bomb)."""


class ModelNotFound(VisionError):
    code = grpc.StatusCode.NOT_FOUND


class NoModelAvailable(ModelNotFound):
    """The model store is empty."""


class Overloaded(VisionError):
    """The request queue is full; retry after a short wait."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class NotReady(VisionError):
    code = grpc.StatusCode.UNAVAILABLE


class InvalidCheckpoint(VisionError):
    """A checkpoint that cannot be imported (unsafe, malformed, or not matching the architecture)."""

    code = grpc.StatusCode.INVALID_ARGUMENT
