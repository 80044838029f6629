"""Domain errors, raised deep in the code. They carry no transport types: `vision.rpc.status` maps each kind
to a gRPC status code (one table, applied by a server interceptor) and the gateway maps those to HTTP.

Each carries the message a user reads: what was wrong and what to do about it. A service defines its own
errors as subclasses of these kinds (``JobNotFound(NotFound)``), so the table needs no entry per service.
"""

from __future__ import annotations


class VisionError(Exception):
    """Base of every error a caller is meant to see. Raised as is, it reports an internal error."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# -- kinds: what went wrong, as a caller should react to it --------------------------------------------------
class InvalidArgument(VisionError):
    """The request itself is wrong; sending it again will not help."""


class NotFound(VisionError):
    """The thing named does not exist (a model, a version, a job)."""


class Conflict(VisionError):
    """The request is valid but the system is not in a state to do it (a job that already ended)."""


class LimitExceeded(VisionError):
    """The request is larger than a configured limit allows (an upload's files or bytes)."""


class StorageFull(VisionError):
    """The server's disk is full; nothing was kept. Retrying later (or elsewhere) may work."""


class Overloaded(VisionError):
    """The request queue is full; retry after a short wait."""


class NotReady(VisionError):
    """The service (or something it depends on) cannot answer now; retry later or elsewhere."""


class Cancelled(VisionError):
    """The caller went away before the work finished; nothing was kept."""


class PermissionDenied(VisionError):
    """The caller is known but may not do this (another principal's model name, a name reserved to admins)."""


class QuotaExceeded(VisionError):
    """The caller has used up a quota of its own (active jobs, upload bytes today, model names)."""


# -- specific errors shared by several services ----------------------------------------------------------
class InvalidImage(InvalidArgument):
    """The bytes are not a complete, decodable image."""


class UnsupportedImageFormat(InvalidImage):
    """A real image, but not one of the accepted formats."""


class ImageTooLarge(InvalidImage):
    """Too many bytes or too many pixels (e.g. a decompression bomb)."""


class ModelNotFound(NotFound):
    """No such model or version in the store (or not of this service's task)."""


class NoModelAvailable(ModelNotFound):
    """The model store is empty."""


class InvalidCheckpoint(InvalidArgument):
    """A checkpoint that cannot be imported (unsafe, malformed, or not matching the architecture)."""


class ModelLoadFailed(NotReady):
    """A stored version could not be loaded (damaged weights, missing runtime); other models still serve."""
