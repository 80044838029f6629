"""The gateway against a real trainer_svc and classifier_svc, as one client with a script would attack it:
uploads that go quiet, uploads beyond the cap, form fields without end, malformed paging, and event streams
that never close. Each is answered with a clear 4xx at once, and holds neither a gateway slot nor a trainer
thread for longer than its limit."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.conftest import live_gateway, start_classifier
from tests.support.digits import digit_images
from tests.support.trainer import running_trainer, trainer_settings
from tests.test_gateway_train import form, multipart
from vision.models.store import ModelStore

IDLE_TIMEOUT_S = 1.5
BOUNDARY = "robustb0undary"
TINY_JOB = {
    "model_name": "tiny", "arch": "smallcnn", "pretrained": "false", "epochs": "2", "batch_size": "8",
    "img_size": "32", "hflip": "false", "seed": "0",
}  # fmt: skip


@dataclass
class Stack:
    trainer_addr: str
    classifier_addr: str
    images: dict[int, list[tuple[str, bytes]]]

    def gateway(self, **settings: Any) -> Any:
        return live_gateway(
            classifier_addr=self.classifier_addr, trainer_addr=self.trainer_addr, timeout_s=30, **settings
        )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("robust-gateway")
    # One upload at a time in the trainer: a gateway that opened CreateJob before the files would be refused.
    settings = trainer_settings(root, max_concurrent_uploads=1, max_watchers=2)
    classifier, engine = start_classifier(ModelStore(settings.model_dir))
    by_class: dict[int, list[tuple[str, bytes]]] = {1: [], 2: []}
    for name, png in digit_images(32, per_class=6):
        if name in ("0", "1"):
            by_class[int(name) + 1].append((f"{name}-{len(by_class[int(name) + 1])}.png", png))
    with running_trainer(settings) as (trainer, _, _):
        yield Stack(f"127.0.0.1:{trainer.port}", f"127.0.0.1:{classifier.port}", by_class)
    classifier.stop(0).wait()
    engine.close()  # type: ignore[attr-defined]


def raw_post(port: int, path: str, first_bytes: bytes, length: int = 10**8) -> socket.socket:
    """A POST whose headers promise ``length`` bytes of multipart body, of which only ``first_bytes`` come."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()
    sock.sendall(head + first_bytes)
    return sock


def field(name: str, value: bytes) -> bytes:
    return f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value + b"\r\n"


def file_start(name: str, filename: str) -> bytes:
    disposition = f'form-data; name="{name}"; filename="{filename}"'
    return f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\nContent-Type: image/png\r\n\r\n".encode()


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], dict[str, Any]]:
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        assert piece, "the connection closed without an answer"
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers.get("content-length", "0")):
        piece = sock.recv(65536)
        if not piece:
            break
        body += piece
    return int(lines[0].split()[1]), headers, json.loads(body) if body else {}


def batches(piece: Any, count: int, size: int = 64 * 1024) -> Iterator[bytes]:
    """``piece(1) .. piece(count)`` joined into sends of about ``size`` bytes (one send per piece at most)."""
    batch, length = [], 0
    for i in range(1, count + 1):
        batch.append(piece(i))
        length += len(batch[-1])
        if length >= size:
            yield b"".join(batch)
            batch, length = [], 0
    if batch:
        yield b"".join(batch)


def post_job(api: httpx.Client, stack: Stack, **fields: str) -> httpx.Response:
    body, headers = multipart(form(["zero", "one"], stack.images, **{**TINY_JOB, **fields}))
    return api.post("/train", content=body, headers=headers)


# -- uploads -------------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_an_upload_that_goes_quiet_is_408_and_frees_its_slot(stack: Stack) -> None:
    with (
        stack.gateway(body_idle_timeout_s=IDLE_TIMEOUT_S, train_max_concurrent=1) as live,
        httpx.Client(base_url=live.url, timeout=60) as api,
    ):
        quiet = raw_post(
            live.port, "/train", field("label1", b"zero") + file_start("files1", "a.png") + b"\x89P"
        )
        started = time.monotonic()
        status, headers, body = read_response(quiet)
        waited = time.monotonic() - started
        quiet.close()
        assert status == 408 and body["error"]["code"] == "request_timeout", body
        assert headers.get("connection") == "close"
        assert IDLE_TIMEOUT_S * 0.8 < waited < IDLE_TIMEOUT_S + 3
        reply = post_job(api, stack, epochs="1")  # the slot and the trainer's stream are free again
        assert reply.status_code == 202, reply.text


@pytest.mark.timeout(60)
def test_form_fields_without_files_yet_hold_no_trainer_call(stack: Stack) -> None:
    """The trainer takes one upload at a time here: had the gateway opened CreateJob for each of these
    clients as their headers arrived, the real upload after them would be refused."""
    with stack.gateway(train_max_concurrent=8) as live, httpx.Client(base_url=live.url, timeout=60) as api:
        slow = [
            raw_post(live.port, "/train", field("label1", b"zero") + field("label2", b"one"))
            for _ in range(3)
        ]
        time.sleep(0.5)
        try:
            reply = post_job(api, stack, epochs="1")
            assert reply.status_code == 202, reply.text
        finally:
            for sock in slow:
                sock.close()


@pytest.mark.timeout(60)
def test_uploads_beyond_the_gateways_cap_get_429_with_retry_after(stack: Stack) -> None:
    with (
        stack.gateway(train_max_concurrent=1, retry_after_s=4) as live,
        httpx.Client(base_url=live.url, timeout=60) as api,
    ):
        holding = raw_post(live.port, "/train", field("label1", b"zero") + file_start("files1", "a.png"))
        try:
            time.sleep(0.5)
            reply = post_job(api, stack)
            assert reply.status_code == 429, reply.text
            assert reply.headers["retry-after"] == "4"
            assert "1 training uploads are in progress" in reply.json()["error"]["message"]
        finally:
            holding.close()
        deadline = time.monotonic() + 10  # the held upload is dropped when its client goes away
        while (reply := post_job(api, stack, epochs="1")).status_code == 429 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert reply.status_code == 202, reply.text


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("piece", "status", "fragment"),
    [
        (lambda i: field(f"label{i}", b"L" * 60_000), 400, "longer than 1024 bytes"),  # long labels
        (lambda i: field(f"label{i}", b"L" * 1000), 413, "add up to more than"),  # many labels
        (lambda i: field("label1", b""), 400, "text fields"),  # one label, repeated without end
    ],
)
def test_a_label_flood_is_refused_before_the_body_is_read(
    stack: Stack, piece: Any, status: int, fragment: str
) -> None:
    with stack.gateway() as live:
        sock = raw_post(live.port, "/train", b"")
        sent = 0
        sock.settimeout(0.05)
        try:
            for chunk in batches(piece, 3000):  # 3,000 labels: up to 180 MB if the gateway kept reading
                sock.sendall(chunk)
                sent += len(chunk)
                try:
                    if sock.recv(1, socket.MSG_PEEK):
                        break
                except (TimeoutError, BlockingIOError):
                    continue
        except TimeoutError:
            pass  # the gateway stopped reading (it has refused): our send buffer filled up
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused and closed while we were still sending: what we want
        sock.settimeout(10)
        answer = read_response(sock)
        sock.close()
    code, _, body = answer
    assert code == status and fragment in body["error"]["message"], body
    assert sent < 3 * 1024 * 1024, f"{sent} bytes were read before the refusal"


# -- paging ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "field_name"),
    [
        ("page_size=99999999999", "page_size"),
        ("page_size=0", "page_size"),
        ("page_size=%C2%B2", "page_size"),
        ("page_token=" + "9" * 30, "page_token"),
        ("page_token=abc", "page_token"),
    ],
)
def test_malformed_paging_of_the_jobs_listing_is_a_400_naming_the_field(
    stack: Stack, query: str, field_name: str
) -> None:
    with stack.gateway() as live, httpx.Client(base_url=live.url, timeout=30) as api:
        reply = api.get(f"/jobs?{query}")
        assert reply.status_code == 400, reply.text
        assert field_name in reply.json()["error"]["message"]
        assert api.get("/jobs?page_size=2").status_code == 200


# -- event streams -------------------------------------------------------------------------------------------


def sse_events(response: httpx.Response) -> list[tuple[str, str, dict[str, Any]]]:
    """(id, event, data) of every event until the server ends the stream (id '' when it sent none)."""
    events, event_id, name = [], "", ""
    for line in response.iter_lines():
        if line.startswith("id: "):
            event_id = line[4:]
        elif line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            events.append((event_id, name, json.loads(line[6:])))
            event_id = ""
    return events


def wait_ended(api: httpx.Client, job_id: str, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job: dict[str, Any] = api.get(f"/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not end")


@pytest.mark.timeout(180)
def test_an_event_stream_resumes_after_last_event_id_and_is_204_once_everything_was_sent(
    stack: Stack,
) -> None:
    with stack.gateway() as live, httpx.Client(base_url=live.url, timeout=60) as api:
        job_id = post_job(api, stack).json()["job_id"]
        assert wait_ended(api, job_id)["status"] == "succeeded"
        with api.stream("GET", f"/jobs/{job_id}/events") as response:
            assert response.status_code == 200
            everything = sse_events(response)
        ids = [int(event_id) for event_id, _, _ in everything if event_id]
        assert ids == sorted(ids) and len(ids) >= 3
        with api.stream("GET", f"/jobs/{job_id}/events", headers={"Last-Event-ID": str(ids[1])}) as response:
            rest = sse_events(response)
        assert [int(i) for i, _, _ in rest if i] == ids[2:]
        assert rest[-1][1] == "state" and rest[-1][2]["status"] == "succeeded"
        done = api.get(f"/jobs/{job_id}/events", headers={"Last-Event-ID": str(ids[-1])})
        assert done.status_code == 204  # EventSource stops reconnecting
        bad = api.get(f"/jobs/{job_id}/events", headers={"Last-Event-ID": "x" * 40})
        assert bad.status_code == 400


@pytest.mark.timeout(180)
def test_event_streams_end_after_their_lifetime_and_beyond_the_cap_get_429(stack: Stack) -> None:
    with (
        stack.gateway(events_max_s=2.0, events_max_streams=1) as live,
        httpx.Client(base_url=live.url, timeout=60) as api,
    ):
        job_id = post_job(api, stack, epochs="1000", model_name=f"long-{uuid.uuid4().hex[:6]}").json()[
            "job_id"
        ]
        lasted: list[float] = []
        seen: list[list[tuple[str, str, dict[str, Any]]]] = []

        def watch() -> None:
            started = time.monotonic()
            with api.stream("GET", f"/jobs/{job_id}/events") as response:
                assert response.status_code == 200
                seen.append(sse_events(response))
            lasted.append(time.monotonic() - started)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            time.sleep(0.8)
            second = api.get(f"/jobs/{job_id}/events")
            assert second.status_code == 429, second.text
            watcher.join(30)
            assert lasted and 1.5 < lasted[0] < 8, lasted
            assert any(event_id for event_id, _, _ in seen[0])  # ids to resume from
            with api.stream("GET", f"/jobs/{job_id}/events") as again:  # its slot was given back
                assert again.status_code == 200
        finally:
            api.post(f"/jobs/{job_id}/cancel")
            watcher.join(30)
        assert wait_ended(api, job_id)["status"] == "cancelled"


@pytest.mark.timeout(180)
def test_a_stream_the_trainer_refuses_for_its_watcher_limit_is_a_429_not_an_event(stack: Stack) -> None:
    """The trainer takes 2 watchers here; the gateway would take 10: the third stream gets the trainer's
    refusal as an HTTP 429 with a JSON body before any event-stream header is sent."""
    with (
        stack.gateway(events_max_streams=10) as live,
        httpx.Client(base_url=live.url, timeout=60) as api,
    ):
        job_id = post_job(api, stack, epochs="1000", model_name=f"long-{uuid.uuid4().hex[:6]}").json()[
            "job_id"
        ]
        try:
            with (
                api.stream("GET", f"/jobs/{job_id}/events") as one,
                api.stream("GET", f"/jobs/{job_id}/events") as two,
            ):
                assert (one.status_code, two.status_code) == (200, 200)
                third = api.get(f"/jobs/{job_id}/events")
                assert third.status_code == 429, third.text
                assert third.headers["content-type"].startswith("application/json")
                assert "retry-after" in third.headers
        finally:
            api.post(f"/jobs/{job_id}/cancel")
        assert wait_ended(api, job_id)["status"] == "cancelled"
