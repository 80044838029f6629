"""Untrusted uploads: every bad one is refused with a 4xx that says what was wrong, nothing is decoded that
should not be, and the same classifier goes on answering good requests.

The bad files are real files of their format (made with Pillow or written to the format's spec), sent
under a `.jpg` name, and checked twice: through the gateway and against `decode_image` directly.
"""

from __future__ import annotations

import functools
import io
import random
import re
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import numpy as np
import pytest
from PIL import Image, ImageOps, features

from gateway.config import GatewaySettings
from tests.conftest import encode, live_gateway, publish_random_model, start_classifier, ultralytics_asset
from vision.errors import ImageTooLarge, InvalidImage, UnsupportedImageFormat
from vision.image.decode import ImageLimits, decode_image
from vision.models.store import ModelStore

# -- bad files, each a real file of its kind ---------------------------------------------------------------


@functools.cache
def small_photo() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut()).resize((64, 64))


@functools.cache
def bus_photo() -> bytes:
    return ultralytics_asset("bus.jpg").read_bytes()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_declaring(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of a few hundred bytes whose header declares ``width`` x ``height`` pixels.

    Decoding it in full would take width*height bytes of memory: a decompression bomb.
    """
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grayscale, no interlace
    rows = zlib.compress((b"\x00" + bytes((width + 7) // 8)) * 4, 9)  # the first rows; the rest never come
    chunks = png_chunk(b"IHDR", header) + png_chunk(b"IDAT", rows) + png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def psd_file(width: int = 4, height: int = 4) -> bytes:
    """A minimal Photoshop file (8-bit RGB, raw planes), laid out as the PSD spec says."""
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, height, width, 8, 3)
    empty_sections = struct.pack(">III", 0, 0, 0)  # colour mode data, image resources, layers and masks
    return header + empty_sections + struct.pack(">H", 0) + bytes(3 * width * height)


def jpeg2000(codestream: bool) -> bytes:
    """A JPEG 2000 file (JP2 box format) or bare codestream (J2K)."""
    if features.check("jpg_2000"):
        return encode(small_photo(), "JPEG2000", no_jp2=codestream)
    # Pillow built without OpenJPEG: the format's own signature, which is what the server looks at.
    return b"\xffO\xffQ" + bytes(64) if codestream else b"\x00\x00\x00\x0cjP  \r\n\x87\n" + bytes(64)


BadFile = Callable[[], bytes]


def genuine(fmt: str, make: BadFile) -> BadFile:
    """``make``, made to prove that its bytes are a real ``fmt`` file (Pillow opens them as one): the tests
    must refuse real files of each format, not garbage that merely starts right."""

    def made() -> bytes:
        data = make()
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == fmt, f"the test's {fmt} file is not one (Pillow reads {image.format})"
        return data

    return made


def jpeg2000_file() -> bytes:
    """A JP2 file; proved genuine when Pillow has OpenJPEG to read it."""
    if features.check("jpg_2000"):
        return genuine("JPEG2000", lambda: jpeg2000(codestream=False))()
    return jpeg2000(codestream=False)


# (make the bytes, the error decode_image raises, what its message must mention)
BAD_IMAGES = [
    pytest.param(lambda: b"", InvalidImage, "empty (0 bytes)", id="zero-bytes"),
    pytest.param(lambda: b"label,score\nbus,0.93\n", InvalidImage, "not an image", id="csv-text"),
    pytest.param(lambda: random.Random(0).randbytes(4096), InvalidImage, "not an image", id="random-bytes"),
    pytest.param(lambda: bus_photo()[:3], InvalidImage, "truncated", id="jpeg-cut-in-header"),
    pytest.param(lambda: bus_photo()[:60_000], InvalidImage, "truncated", id="jpeg-cut-in-pixels"),
    pytest.param(
        genuine("TIFF", lambda: encode(small_photo(), "TIFF")), UnsupportedImageFormat, "TIFF", id="tiff"
    ),
    pytest.param(genuine("PSD", psd_file), UnsupportedImageFormat, "PSD", id="psd"),
    pytest.param(lambda: encode(small_photo(), "PDF"), UnsupportedImageFormat, "PDF", id="pdf"),
    pytest.param(lambda: encode(small_photo(), "EPS"), UnsupportedImageFormat, "EPS", id="eps"),
    pytest.param(jpeg2000_file, UnsupportedImageFormat, "JPEG 2000", id="jpeg2000-jp2"),
    pytest.param(lambda: jpeg2000(codestream=True), UnsupportedImageFormat, "JPEG 2000", id="jpeg2000-j2k"),
    pytest.param(
        genuine("GIF", lambda: encode(small_photo(), "GIF")), UnsupportedImageFormat, "GIF", id="gif"
    ),
    pytest.param(lambda: png_declaring(50_000, 50_000), ImageTooLarge, "pixels", id="bomb-50000x50000"),
    pytest.param(
        genuine("PNG", lambda: png_declaring(8_000, 8_000)), ImageTooLarge, "pixels", id="bomb-8000x8000"
    ),
]


# -- one classifier and gateway for the whole module; the tests check they survive every bad request ---------

ORIGIN = "http://example.com"
SMALL_IMAGE_LIMIT = 16 * 1024


@contextmanager
def gateway_client(**settings: object) -> Iterator[httpx.Client]:
    with live_gateway(**settings) as live, httpx.Client(base_url=live.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def classifier_addr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    store = ModelStore(tmp_path_factory.mktemp("bad-input") / "models")
    publish_random_model(store)
    server, engine = start_classifier(store)
    yield f"127.0.0.1:{server.port}"
    server.stop(0).wait()
    engine.close()  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def api(classifier_addr: str) -> Iterator[httpx.Client]:
    with gateway_client(classifier_addr=classifier_addr) as client:
        yield client


@pytest.fixture(scope="module")
def small_limit_api(classifier_addr: str) -> Iterator[httpx.Client]:
    """A gateway taking images up to 16 KiB (plus the form around them), CORS on for ORIGIN."""
    with gateway_client(
        classifier_addr=classifier_addr, max_image_bytes=SMALL_IMAGE_LIMIT, cors_origins=[ORIGIN]
    ) as client:
        yield client


@pytest.fixture(scope="module")
def good_jpeg() -> bytes:
    return encode(small_photo(), "JPEG", quality=90)


def upload(data: bytes, name: str = "photo.jpg") -> dict[str, tuple[str, bytes, str]]:
    return {"file": (name, data, "image/jpeg")}


def assert_error(response: httpx.Response, status: int, code: str, fragment: str) -> str:
    """The response is the gateway's JSON error with ``status`` and ``code``; returns its message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["success"] is False
    assert set(body["error"]) == {"code", "message", "request_id"}
    assert body["error"]["request_id"] == response.headers["X-Request-ID"]  # leads to the log lines
    assert body["error"]["code"] == code
    message: str = body["error"]["message"]
    assert fragment.lower() in message.lower()
    assert "Traceback" not in message and "object at 0x" not in message
    return message


def assert_still_serving(client: httpx.Client, good_jpeg: bytes) -> None:
    response = client.post("/predict", files=upload(good_jpeg))
    assert response.status_code == 200, response.text
    assert response.json()["success"] is True


# -- through the gateway ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("make", "error", "fragment"), BAD_IMAGES)
def test_bad_upload_named_jpg_is_rejected_with_the_reason_and_the_classifier_keeps_serving(
    api: httpx.Client, good_jpeg: bytes, make: BadFile, error: type[InvalidImage], fragment: str
) -> None:
    response = api.post("/predict", files=upload(make()))
    assert_error(response, 400, "invalid_argument", fragment)
    assert_still_serving(api, good_jpeg)


@pytest.mark.parametrize("side", [50_000, 8_000])
def test_decompression_bomb_is_refused_from_its_header_well_under_a_second(
    api: httpx.Client, good_jpeg: bytes, side: int
) -> None:
    bomb = png_declaring(side, side)
    assert len(bomb) < 1024
    start = time.perf_counter()
    response = api.post("/predict", files=upload(bomb, "bomb.png"))
    elapsed = time.perf_counter() - start
    message = assert_error(response, 400, "invalid_argument", "pixels")
    assert f"{side * side}" in message
    assert elapsed < 0.5, f"took {elapsed:.2f}s: the pixels were decoded"
    assert_still_serving(api, good_jpeg)


BAD_FORMS = [
    pytest.param({}, "image", 400, "invalid_request", "missing field 'file'", id="no-file-field"),
    pytest.param({"file": "photo.jpg"}, "text", 400, "invalid_request", "file: ", id="file-sent-as-text"),
    pytest.param({"top_k": "0"}, "file", 400, "invalid_request", "top_k", id="top_k-0"),
    pytest.param({"top_k": "101"}, "file", 400, "invalid_request", "top_k", id="top_k-101"),
    pytest.param({"top_k": "five"}, "file", 400, "invalid_request", "top_k", id="top_k-not-a-number"),
    pytest.param({"model": "nope"}, "file", 404, "not_found", "model 'nope' not found", id="unknown-model"),
    pytest.param({"version": "99"}, "file", 404, "not_found", "no version '99'", id="unknown-version"),
]


@pytest.mark.parametrize(("form", "file_field", "status", "code", "fragment"), BAD_FORMS)
def test_bad_form_is_rejected_with_the_reason_and_the_classifier_keeps_serving(
    api: httpx.Client,
    good_jpeg: bytes,
    form: dict[str, str],
    file_field: str,
    status: int,
    code: str,
    fragment: str,
) -> None:
    response = api.post("/predict", data=form, files={file_field: ("photo.jpg", good_jpeg, "image/jpeg")})
    assert_error(response, status, code, fragment)
    assert_still_serving(api, good_jpeg)


BAD_BODIES = [
    pytest.param(b'{"file": "photo.jpg"}', "application/json", "missing field 'file'", id="json-not-a-form"),
    pytest.param(b"file=photo.jpg", "application/x-www-form-urlencoded", "file: ", id="urlencoded-form"),
    pytest.param(b"garbage", "multipart/form-data", "missing boundary", id="multipart-without-boundary"),
    pytest.param(b"garbage", "multipart/form-data; boundary=xyz", "invalid multipart", id="broken-multipart"),
]


@pytest.mark.parametrize(("body", "content_type", "fragment"), BAD_BODIES)
def test_body_that_is_not_a_multipart_upload_is_rejected_and_the_classifier_keeps_serving(
    api: httpx.Client, good_jpeg: bytes, body: bytes, content_type: str, fragment: str
) -> None:
    response = api.post("/predict", content=body, headers={"content-type": content_type})
    assert response.status_code == 400, response.text
    assert response.json()["success"] is False
    assert fragment in response.json()["error"]["message"].lower()
    assert_still_serving(api, good_jpeg)


def chunks(body: bytes, size: int = 8192) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_upload_over_the_byte_limit_is_refused_with_413_that_browsers_can_read(
    small_limit_api: httpx.Client, good_jpeg: bytes, framing: str
) -> None:
    limit = GatewaySettings(max_image_bytes=SMALL_IMAGE_LIMIT).max_upload_bytes
    photo = bus_photo()
    assert len(photo) > limit
    headers = {"Origin": ORIGIN}
    if framing == "content-length":
        response = small_limit_api.post("/predict", files=upload(photo), headers=headers)
        assert int(response.request.headers["content-length"]) > limit
    else:
        # The same multipart body, streamed with Transfer-Encoding: chunked and no Content-Length.
        prepared = small_limit_api.build_request("POST", "/predict", files=upload(photo))
        headers["content-type"] = prepared.headers["content-type"]
        response = small_limit_api.post("/predict", content=chunks(prepared.read()), headers=headers)
        assert "content-length" not in response.request.headers
        assert response.request.headers["transfer-encoding"] == "chunked"
    assert_error(response, 413, "payload_too_large", f"larger than the limit of {limit} bytes")
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert_still_serving(small_limit_api, good_jpeg)


# -- decode_image on its own --------------------------------------------------------------------------------


@pytest.mark.parametrize(("make", "error", "fragment"), BAD_IMAGES)
def test_decode_image_raises_the_matching_error_with_the_reason(
    make: BadFile, error: type[InvalidImage], fragment: str
) -> None:
    with pytest.raises(InvalidImage, match=re.escape(fragment)) as raised:
        decode_image(make())
    assert type(raised.value) is error


def test_byte_limit_is_checked_before_anything_else() -> None:
    data = encode(small_photo(), "PNG")
    with pytest.raises(ImageTooLarge, match=f"over the limit of {len(data) - 1} bytes"):
        decode_image(data, ImageLimits(max_bytes=len(data) - 1))


def test_pixel_limit_applies_to_ordinary_photos_too() -> None:
    with pytest.raises(ImageTooLarge, match="64x64 = 4096 pixels, over the limit of 4000 pixels"):
        decode_image(encode(small_photo(), "JPEG"), ImageLimits(max_pixels=4000))


@pytest.mark.parametrize(
    ("fmt", "options", "max_mean_error"),
    [("JPEG", {"quality": 95}, 6), ("PNG", {}, 0), ("WEBP", {"lossless": True}, 0), ("BMP", {}, 0)],
)
def test_each_accepted_format_decodes_to_the_same_rgb_pixels(
    fmt: str, options: dict[str, object], max_mean_error: int
) -> None:
    photo = small_photo()
    decoded = decode_image(encode(photo, fmt, **options))
    assert decoded.mode == "RGB" and decoded.size == photo.size
    difference = np.abs(np.asarray(decoded, dtype=int) - np.asarray(photo, dtype=int))
    assert difference.mean() <= max_mean_error


@pytest.mark.parametrize(
    ("image", "fmt"),
    [
        pytest.param(Image.new("RGBA", (8, 8), (200, 0, 0, 0)), "PNG", id="rgba-png"),
        pytest.param(Image.new("LA", (8, 8), (0, 0)), "PNG", id="la-png"),
        pytest.param(Image.new("RGBA", (8, 8), (0, 0, 200, 0)), "WEBP", id="rgba-webp"),
    ],
)
def test_transparent_pixels_are_flattened_onto_white(image: Image.Image, fmt: str) -> None:
    decoded = decode_image(encode(image, fmt, **({"lossless": True} if fmt == "WEBP" else {})))
    assert decoded.mode == "RGB"
    assert np.asarray(decoded).min() >= 250


def test_half_transparent_png_blends_with_white() -> None:
    decoded = decode_image(encode(Image.new("RGBA", (4, 4), (0, 0, 0, 128)), "PNG"))
    assert decoded.getpixel((0, 0)) == pytest.approx((127, 127, 127), abs=1)


def test_palette_png_with_a_transparent_index_is_flattened_onto_white() -> None:
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, 255, 0, 0])
    image.putpixel((0, 0), 1)
    decoded = decode_image(encode(image, "PNG", transparency=0))
    assert decoded.getpixel((0, 0)) == (255, 0, 0)
    assert decoded.getpixel((3, 3)) == (255, 255, 255)


def test_16_bit_grayscale_png_keeps_its_tones() -> None:
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    decoded = np.asarray(decode_image(encode(Image.fromarray(ramp), "PNG")))
    expected = (ramp >> 8).astype(np.uint8)
    for channel in range(3):
        assert np.array_equal(decoded[..., channel], expected)


def quadrants(width: int = 64, height: int = 32) -> Image.Image:
    """Red, green / blue, white quadrants: every rotation and flip of it looks different."""
    image = Image.new("RGB", (width, height))
    w, h = width // 2, height // 2
    for (x, y), colour in zip(
        [(0, 0), (w, 0), (0, h), (w, h)], ["red", "lime", "blue", "white"], strict=True
    ):
        image.paste(colour, (x, y, x + w, y + h))
    return image


@pytest.mark.parametrize(
    ("orientation", "as_displayed"),
    [
        pytest.param(1, lambda im: im, id="1-upright"),
        pytest.param(2, ImageOps.mirror, id="2-mirrored"),
        pytest.param(3, lambda im: im.transpose(Image.Transpose.ROTATE_180), id="3-upside-down"),
        pytest.param(6, lambda im: im.transpose(Image.Transpose.ROTATE_270), id="6-turn-clockwise"),
        pytest.param(8, lambda im: im.transpose(Image.Transpose.ROTATE_90), id="8-turn-anticlockwise"),
    ],
)
def test_exif_orientation_is_applied_so_pixels_are_as_the_photo_is_shown(
    orientation: int, as_displayed: Callable[[Image.Image], Image.Image]
) -> None:
    stored = quadrants()
    exif = Image.Exif()
    exif[0x0112] = orientation
    decoded = decode_image(encode(stored, "JPEG", quality=95, exif=exif.tobytes()))
    expected = as_displayed(stored)
    assert decoded.size == expected.size
    difference = np.abs(np.asarray(decoded, dtype=int) - np.asarray(expected, dtype=int))
    assert difference.mean() < 4
