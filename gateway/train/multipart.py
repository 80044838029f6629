"""multipart/form-data parsed as it streams in (python_multipart's incremental parser), never held whole.

`parse_multipart(content_type, body, limits)` turns an async iterator of body chunks into parts, in body
order: `FormField` (a text field, whole: text fields are small and capped), and for each file a `FileStart`,
its bytes as `FileData` pieces (as they arrived: at most one received chunk each), and a `FileEnd`.

Text fields are held in memory until they are complete, so `FieldLimits` bounds them while they stream in:
the bytes of one field, the number of text fields and their bytes together (names included). A body over a
limit is refused the moment it passes it, before the rest is read.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import unquote

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from gateway.errors import ApiError

_EXTENDED_FILENAME = re.compile(r";\s*filename\*\s*=\s*([^;]*)", re.IGNORECASE)


@dataclass(frozen=True)
class FieldLimits:
    """Bounds on a body's text (non-file) fields."""

    max_field_bytes: int  # one field's value
    max_fields: int  # text fields in the body
    max_total_bytes: int  # every text field's name and value together


@dataclass(frozen=True)
class FormField:
    name: str
    value: str


@dataclass(frozen=True)
class FileStart:
    name: str
    filename: str


@dataclass(frozen=True)
class FileData:
    data: bytes


@dataclass(frozen=True)
class FileEnd:
    pass


Part = FormField | FileStart | FileData | FileEnd


def _bad(message: str) -> ApiError:
    return ApiError(400, "invalid_request", message)


def boundary_of(content_type: str) -> bytes:
    """The multipart boundary of a Content-Type header; 400 when it is not multipart/form-data."""
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        raise _bad("send the training images as multipart/form-data (fields label1..N, files1..N)")
    return options[b"boundary"]


class _Collector:
    """python_multipart callbacks -> a list of parts (drained after every ``write``)."""

    def __init__(self, limits: FieldLimits) -> None:
        self.limits = limits
        self.fields = 0
        self.text_bytes = 0
        self.parts: list[Part] = []
        self.headers: dict[str, str] = {}
        self._field, self._value = b"", b""
        self._name = ""
        self._is_file = False
        self._text = bytearray()
        self.ended = False

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self._header_piece("_field", data[start:end]),
            "on_header_value": lambda data, start, end: self._header_piece("_value", data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self.headers, self._text = {}, bytearray()

    def _header_piece(self, attribute: str, piece: bytes) -> None:
        setattr(self, attribute, getattr(self, attribute) + piece)

    def _header_end(self) -> None:
        self.headers[self._field.decode("latin-1").lower()] = self._value.decode("latin-1")
        self._field, self._value = b"", b""

    def _headers_finished(self) -> None:
        disposition = self.headers.get("content-disposition", "")
        _, options = parse_options_header(disposition)
        if b"name" not in options:
            raise _bad("a multipart part has no name (Content-Disposition: form-data; name=...)")
        self._name = options[b"name"].decode("utf-8", "replace")
        filename = options[b"filename"].decode("utf-8", "replace") if b"filename" in options else None
        if filename is None:
            filename = extended_file_name(disposition)
        self._is_file = filename is not None
        if filename is not None:
            self.parts.append(FileStart(self._name, filename))
            return
        self.fields += 1
        if self.fields > self.limits.max_fields:
            raise _bad(f"the form has more than {self.limits.max_fields} text fields, the most accepted")
        self._count_text(len(options[b"name"]))

    def _count_text(self, size: int) -> None:
        self.text_bytes += size
        if self.text_bytes > self.limits.max_total_bytes:
            raise ApiError(
                413,
                "payload_too_large",
                f"the form's text fields add up to more than {self.limits.max_total_bytes} bytes, the limit",
            )

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file:
            self.parts.append(FileData(bytes(data[start:end])))
            return
        self._text += data[start:end]
        if len(self._text) > self.limits.max_field_bytes:
            raise _bad(f"form field {self._name!r} is longer than {self.limits.max_field_bytes} bytes")
        self._count_text(end - start)

    def _part_end(self) -> None:
        if self._is_file:
            self.parts.append(FileEnd())
            return
        try:
            self.parts.append(FormField(self._name, self._text.decode("utf-8")))
        except UnicodeDecodeError:
            raise _bad(f"form field {self._name!r} is not UTF-8 text") from None

    def _end(self) -> None:
        self.ended = True


def extended_file_name(disposition: str) -> str | None:
    """The file name of a part that gives only RFC 5987's ``filename*=utf-8''caf%C3%A9.png`` (python-multipart
    ignores it, as RFC 7578 forbids it in forms; some clients still send it): a file, not a text field."""
    match = _EXTENDED_FILENAME.search(disposition)
    if match is None:
        return None
    charset, _, encoded = match.group(1).strip().strip('"').partition("'")
    encoded = encoded.partition("'")[2]  # after the language tag
    try:
        return unquote(encoded, encoding=charset or "utf-8", errors="replace")
    except LookupError:  # an unknown charset: the name is only informative
        return unquote(encoded, errors="replace")


async def parse_multipart(
    content_type: str, body: AsyncIterator[bytes], limits: FieldLimits
) -> AsyncIterator[Part]:
    """The body's parts as they arrive; 400 for a malformed or truncated body, 400/413 past ``limits``."""
    collector = _Collector(limits)
    parser = MultipartParser(boundary_of(content_type), collector.callbacks())  # type: ignore[arg-type]
    async for chunk in body:
        if not chunk:
            continue
        try:
            parser.write(chunk)
        except MultipartParseError as exc:
            raise _bad(f"the multipart body is malformed: {exc}") from exc
        parts, collector.parts = collector.parts, []
        for part in parts:
            yield part
    parser.finalize()
    for part in collector.parts:
        yield part
    if not collector.ended:
        raise _bad("the multipart body ended early (no closing boundary): the upload was cut short")
