"""Traffic for the reliability tests (no tests in here): the requests a client sends through the gateway,
client threads that keep sending them and record every answer, raw sockets that open a request and go
quiet, memory sampled from /proc while something runs, and small training jobs posted to POST /train."""

from __future__ import annotations

import io
import socket
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from PIL import Image

from tests.reliability.mesh import rss_bytes, status_bytes
from tests.support.digits import digit_images
from tests.test_gateway_train import form, multipart

MiB = 1024 * 1024
# The mesh's gateway gives each gRPC call this long (VISION_GATEWAY_TIMEOUT_S in the conftest); a client
# waiting longer than CLIENT_TIMEOUT_S for an answer has met a hang.
GATEWAY_TIMEOUT_S = 10.0
CLIENT_TIMEOUT_S = GATEWAY_TIMEOUT_S + 5.0

Send = Callable[[httpx.Client], httpx.Response]


def jpeg(size: int = 320, seed_photo: bytes | None = None) -> bytes:
    """A real photo (bus.jpg when given) scaled to ``size`` px on its longer side, as JPEG."""
    image = Image.open(io.BytesIO(seed_photo)) if seed_photo else Image.new("RGB", (size, size), "gray")
    image = image.convert("RGB")
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def huge_png(width: int = 7000, height: int = 5700) -> bytes:
    """A PNG declaring ``width`` x ``height`` pixels (39.9 MP, just under the 40 MP limit) that compresses
    to ~160 KiB: uniform grey with a small noisy patch, so it is a real picture and not one flat colour."""
    image = Image.new("RGB", (width, height), (128, 128, 128))
    patch = Image.effect_noise((96, 96), 64).convert("RGB")
    image.paste(patch, (width // 2, height // 2))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=9)
    return buffer.getvalue()


@dataclass
class Requests:
    """One request of each kind the gateway serves, with the images they send."""

    photo: bytes  # a small real JPEG

    def predict(self, client: httpx.Client) -> httpx.Response:
        return client.post("/predict", files={"file": ("photo.jpg", self.photo, "image/jpeg")})

    def explain(self, client: httpx.Client) -> httpx.Response:
        return client.post("/explain", files={"file": ("photo.jpg", self.photo, "image/jpeg")})

    def detect(self, client: httpx.Client) -> httpx.Response:
        return client.post(
            "/detect",
            files={"file": ("photo.jpg", self.photo, "image/jpeg")},
            data={"annotate": "false", "imgsz": "320"},
        )

    def jobs(self, client: httpx.Client) -> httpx.Response:
        return client.get("/jobs", params={"page_size": 5})

    def models(self, client: httpx.Client) -> httpx.Response:
        return client.get("/models")

    def health(self, client: httpx.Client) -> httpx.Response:
        return client.get("/health")

    # -- bad inputs: each a 4xx ------------------------------------------------------------------------------
    def not_an_image(self, client: httpx.Client) -> httpx.Response:
        return client.post("/predict", files={"file": ("notes.txt", b"plain text, not pixels", "text/plain")})

    def truncated_jpeg(self, client: httpx.Client) -> httpx.Response:
        cut = self.photo[: len(self.photo) // 3]
        return client.post("/explain", files={"file": ("cut.jpg", cut, "image/jpeg")})

    def unknown_model(self, client: httpx.Client) -> httpx.Response:
        files = {"file": ("photo.jpg", self.photo, "image/jpeg")}
        return client.post("/predict", files=files, data={"model": "no-such-model"})

    def bad_threshold(self, client: httpx.Client) -> httpx.Response:
        files = {"file": ("photo.jpg", self.photo, "image/jpeg")}
        return client.post("/detect", files=files, data={"conf": "2.5"})


@dataclass
class Answer:
    """One request's fate: its HTTP status, or 'timeout' / the transport error's name when none came."""

    status: int | str
    sent_at: float
    seconds: float


def answer_of(client: httpx.Client, send: Send) -> Answer:
    """Send one request; its fate."""
    started = time.monotonic()
    status: int | str
    try:
        status = send(client).status_code
    except httpx.TimeoutException:
        status = "timeout"
    except httpx.HTTPError as exc:
        status = type(exc).__name__
    return Answer(status, started, time.monotonic() - started)


@dataclass
class Senders:
    """``threads`` client threads, each sending ``send`` again and again (``pause_s`` apart) until stopped,
    recording every answer."""

    url: str
    send: Send
    threads: int = 2
    pause_s: float = 0.05
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> Senders:
        for n in range(self.threads):
            worker = threading.Thread(target=self._loop, name=f"sender-{n}", daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(CLIENT_TIMEOUT_S + 5)

    def _loop(self) -> None:
        with httpx.Client(base_url=self.url, timeout=CLIENT_TIMEOUT_S) as client:
            while not self._stop.is_set():
                self.record(client, self.send)
                self._stop.wait(self.pause_s)

    def record(self, client: httpx.Client, send: Send) -> Answer:
        answer = answer_of(client, send)
        with self._lock:
            self.answers.append(answer)
        return answer

    def first_200_after(self, moment: float) -> float | None:
        """When the first request sent after ``moment`` that got 200 was sent, or None."""
        with self._lock:
            after = [a.sent_at for a in self.answers if a.sent_at >= moment and a.status == 200]
        return min(after, default=None)

    def statuses(self) -> Counter[int | str]:
        with self._lock:
            return Counter(a.status for a in self.answers)


def latency_figures(seconds: list[float]) -> dict[str, float]:
    """p50 and max of ``seconds``, in milliseconds."""
    return {"p50_ms": round(statistics.median(seconds) * 1000, 1), "max_ms": round(max(seconds) * 1000, 1)}


# -- memory -------------------------------------------------------------------------------------------------


def vm_hwm_bytes(pid: int) -> int:
    """Peak resident memory of ``pid`` since it started (VmHWM), 0 when it is gone."""
    return status_bytes(pid, "VmHWM")


class PeakRss:
    """Samples the resident memory (VmRSS) of ``pid`` every ``interval_s`` while the block runs."""

    def __init__(self, pid: int, interval_s: float = 0.02) -> None:
        self.pid, self.interval_s = pid, interval_s
        self.before = rss_bytes(pid)
        self.peak = self.before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peak = max(self.peak, rss_bytes(self.pid))


# -- raw connections ---------------------------------------------------------------------------------------

BOUNDARY = "reliabilityb0undary"


def text_part(name: str, value: bytes) -> bytes:
    return f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value + b"\r\n"


def file_part_start(name: str, filename: str) -> bytes:
    disposition = f'form-data; name="{name}"; filename="{filename}"'
    return f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\nContent-Type: image/png\r\n\r\n".encode()


def open_request(port: int, head: str, first_bytes: bytes = b"") -> socket.socket:
    """A connection that sent ``head`` (request line and headers, without the blank line) and then
    ``first_bytes`` of the body, and now says nothing more."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(head.encode() + b"\r\n\r\n" + first_bytes)
    return sock


def idle_upload(port: int) -> socket.socket:
    """POST /train promising 100 MB, of which only the labels and the first bytes of one PNG come."""
    head = (
        f"POST /train HTTP/1.1\r\nHost: mesh\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        "Content-Length: 100000000"
    )
    start = text_part("label1", b"zero") + text_part("label2", b"one") + file_part_start("files1", "a.png")
    return open_request(port, head, start + b"\x89PNG\r\n")


def event_watcher(port: int, job_id: str) -> socket.socket:
    """GET /jobs/{job_id}/events, whose answer is then never read."""
    head = f"GET /jobs/{job_id}/events HTTP/1.1\r\nHost: mesh\r\nAccept: text/event-stream"
    return open_request(port, head)


def status_so_far(sock: socket.socket) -> int | str:
    """The HTTP status the server has sent on ``sock`` so far: 'none' when it has sent nothing yet,
    'closed' when it closed without a status line."""
    sock.setblocking(False)
    try:
        data = sock.recv(64, socket.MSG_PEEK)
    except (BlockingIOError, InterruptedError):
        return "none"
    except OSError:
        return "closed"
    finally:
        sock.setblocking(True)
    if not data:
        return "closed"
    line = data.split(b"\r\n", 1)[0].split()
    return int(line[1]) if len(line) > 1 and line[1].isdigit() else "garbled"


# -- training jobs ------------------------------------------------------------------------------------------


def digits_job(
    client: httpx.Client, model_name: str, epochs: int, per_class: int = 20, **options: str
) -> str:
    """POST /train of a small from-scratch SmallCNN on the 32x32 digits (10 classes); the job id."""
    by_class: dict[int, list[tuple[str, bytes]]] = {}
    for index, (label, png) in enumerate(digit_images(32, per_class=per_class)):
        by_class.setdefault(int(label) + 1, []).append((f"{label}-{index}.png", png))
    fields = {
        "model_name": model_name, "arch": "smallcnn", "pretrained": "false", "epochs": str(epochs),
        "batch_size": "16", "lr": "0.002", "img_size": "32", "hflip": "false", "seed": "0",
        "patience": "1000", **options,
    }  # fmt: skip
    body, headers = multipart(form([str(d) for d in range(10)], by_class, **fields))
    reply = client.post("/train", content=body, headers=headers, timeout=120)
    assert reply.status_code == 202, reply.text
    job_id: str = reply.json()["job_id"]
    return job_id


def wait_for_job(
    client: httpx.Client, job_id: str, done: Callable[[dict[str, Any]], bool], timeout_s: float
) -> dict[str, Any]:
    """GET /jobs/{job_id} until ``done(job)`` (a 503 while the trainer is down is waited through)."""
    deadline = time.monotonic() + timeout_s
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            reply = client.get(f"/jobs/{job_id}")
        except httpx.HTTPError:
            reply = None
        if reply is not None and reply.status_code == 200:
            last = reply.json()
            if done(last):
                return last
        elif reply is not None:
            assert reply.status_code == 503, reply.text
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not get there in {timeout_s} s; last seen: {last}")


def ended(job: dict[str, Any]) -> bool:
    return job["status"] in ("succeeded", "failed", "cancelled")
