"""Load and soak against the running mesh: floods of idle connections (quiet uploads, event streams never
read) leave /health answering within a second and /predict answering; 2,000 mixed requests grow no
service's memory beyond a stated bound; concurrent decompression-bomb-sized PNGs and a flood of huge
labels are answered with a clear status while memory stays bounded. Each prints its figures."""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.reliability.mesh import GRPC_SERVICES, VisionRun, figures, rss_bytes, wait_until
from tests.reliability.traffic import (
    BOUNDARY,
    CLIENT_TIMEOUT_S,
    MiB,
    PeakRss,
    Requests,
    answer_of,
    digits_job,
    ended,
    event_watcher,
    huge_png,
    idle_upload,
    jpeg,
    latency_figures,
    status_so_far,
    text_part,
    vm_hwm_bytes,
    wait_for_job,
)

IDLE_UPLOADS = 64
EVENT_WATCHERS = 200
HEALTH_WITHIN_S = 1.0
# What a flood connection may have been told: nothing yet (held), 200 (an event stream), 429 (beyond the
# gateway's caps), 408 (a body that went quiet too long), or the connection closed after one of those.
FLOOD_ANSWERS = {"none", "closed", 200, 408, 429}

MIXED_REQUESTS = 2_000
WARM_UP_REQUESTS = 100
RSS_GROWTH_BOUND = 150 * MiB  # per process, after the warm-up
# Per 20 requests: what a mixed client sends. Bad inputs must get a 4xx, the rest 200.
MIX = (
    ["predict"] * 7 + ["explain"] * 3 + ["detect"] * 2 + ["models"] * 3 + ["health"] * 3
    + ["not_an_image", "truncated_jpeg", "unknown_model", "bad_threshold"] * 1
)  # fmt: skip
BAD = {"not_an_image", "truncated_jpeg", "unknown_model", "bad_threshold"}

DECODE_FLOOD = 8
# Growth of the classifier's resident memory during the flood (before decodes were bounded: 2 GiB).
DECODE_PEAK_BOUND = 1024 * MiB

LABELS, LABEL_BYTES = 3_000, 60 * 1024
LABEL_FLOOD_ANSWER_S = 5.0
# Bytes the client got to send before the answer came: the gateway's reading so far plus what the loopback's
# socket buffers hold (several MiB on Linux); the whole flood is 176 MiB.
SENT_BEFORE_REFUSAL_BOUND = 16 * MiB
GATEWAY_GROWTH_BOUND = 64 * MiB


@pytest.fixture(scope="module")
def requests_(bus_jpeg: bytes) -> Requests:
    return Requests(jpeg(320, bus_jpeg))


@pytest.fixture
def client(mesh: VisionRun) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=mesh.url, timeout=CLIENT_TIMEOUT_S) as api:
        yield api


def _timed(client: httpx.Client, send: Callable[[httpx.Client], httpx.Response]) -> tuple[int, float]:
    started = time.monotonic()
    status = send(client).status_code
    return status, time.monotonic() - started


def _uploads_free(client: httpx.Client) -> bool:
    """Whether POST /train gets past the gateway's upload cap (a form without files is a 400, not a 429)."""
    body = text_part("label1", b"zero") + text_part("label2", b"one") + f"--{BOUNDARY}--\r\n".encode()
    headers = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
    return client.post("/train", content=body, headers=headers).status_code != 429


# -- (a) idle-connection floods ----------------------------------------------------------------------------


@pytest.mark.timeout(150)
def test_64_idle_uploads_and_200_unread_event_streams_leave_health_within_1s_and_predict_answering(
    mesh: VisionRun, requests_: Requests, client: httpx.Client
) -> None:
    job_id = digits_job(client, "flood-watched", epochs=1000, per_class=10)
    wait_for_job(client, job_id, lambda job: job["status"] == "running" or ended(job), 60)
    floods: list[socket.socket] = []
    try:
        floods += [idle_upload(mesh.http_port) for _ in range(IDLE_UPLOADS)]
        floods += [event_watcher(mesh.http_port, job_id) for _ in range(EVENT_WATCHERS)]
        time.sleep(0.5)  # every flood connection is in; their requests are at the gateway
        health, predict = [], []
        for round_ in range(20):
            health.append(_timed(client, requests_.health))
            if round_ % 2 == 0:
                predict.append(_timed(client, requests_.predict))
            time.sleep(0.1)
        uploads = Counter(status_so_far(s) for s in floods[:IDLE_UPLOADS])
        watchers = Counter(status_so_far(s) for s in floods[IDLE_UPLOADS:])
    finally:
        for sock in floods:
            sock.close()
    figures(
        "idle floods",
        idle_uploads=dict(uploads),
        event_watchers=dict(watchers),
        health=latency_figures([s for _, s in health]),
        health_statuses=dict(Counter(c for c, _ in health)),
        predict=latency_figures([s for _, s in predict]),
        predict_statuses=dict(Counter(c for c, _ in predict)),
    )
    try:
        assert {code for code, _ in health} == {200}
        assert max(seconds for _, seconds in health) < HEALTH_WITHIN_S
        assert {code for code, _ in predict} == {200}
        assert set(uploads) | set(watchers) <= FLOOD_ANSWERS, (uploads, watchers)
        assert watchers[200] > 0, "no event stream was open during the flood"
    finally:
        client.post(f"/jobs/{job_id}/cancel")
        assert wait_for_job(client, job_id, ended, 60)["status"] == "cancelled"
        # The flood's connections are gone: their upload slots and trainer streams come back.
        assert wait_until(lambda: _uploads_free(client), 30, 0.5), "upload slots were not given back"


# -- (b) soak: 2,000 mixed requests ------------------------------------------------------------------------


def _send_mixed(mesh: VisionRun, requests_: Requests, total: int, threads: int = 2) -> Counter[str]:
    """``total`` requests in the MIX order from ``threads`` clients; a count of 'kind status' outcomes."""
    order = itertools.count()
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()

    def client_loop() -> None:
        with httpx.Client(base_url=mesh.url, timeout=CLIENT_TIMEOUT_S) as api:
            while (n := next(order)) < total:
                kind = MIX[n % len(MIX)]
                answer = answer_of(api, getattr(requests_, kind))
                with lock:
                    outcomes[f"{kind} {answer.status}"] += 1

    workers = [threading.Thread(target=client_loop, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return outcomes


def _unexpected(outcomes: Counter[str]) -> dict[str, int]:
    """Outcomes other than 200 for a good request and a 4xx other than 429 for a bad one."""
    wrong = {}
    for outcome, count in outcomes.items():
        kind, status = outcome.split(" ", 1)
        good = status.isdigit() and (
            400 <= int(status) < 500 and int(status) != 429 if kind in BAD else int(status) == 200
        )
        if not good:
            wrong[outcome] = count
    return wrong


@pytest.mark.timeout(240)
def test_2000_mixed_requests_grow_no_service_by_more_than_150_mib_after_warm_up(
    mesh: VisionRun, requests_: Requests
) -> None:
    warm = _send_mixed(mesh, requests_, WARM_UP_REQUESTS)
    assert not _unexpected(warm), dict(warm)
    pids = mesh.child_pids()
    assert set(pids) == {*GRPC_SERVICES, "gateway"}
    before = {name: rss_bytes(pid) for name, pid in pids.items()}
    started = time.monotonic()
    outcomes = _send_mixed(mesh, requests_, MIXED_REQUESTS)
    seconds = time.monotonic() - started
    after = {name: rss_bytes(pid) for name, pid in pids.items()}
    growth = {name: after[name] - before[name] for name in pids}
    figures(
        "soak",
        requests=sum(outcomes.values()),
        seconds=round(seconds, 1),
        rss_before_mib={n: round(v / MiB) for n, v in before.items()},
        rss_after_mib={n: round(v / MiB) for n, v in after.items()},
        growth_mib={n: round(v / MiB, 1) for n, v in growth.items()},
        bound_mib=RSS_GROWTH_BOUND // MiB,
    )
    print("  outcomes:", dict(sorted(outcomes.items())))
    assert sum(outcomes.values()) == MIXED_REQUESTS
    assert not _unexpected(outcomes), _unexpected(outcomes)
    assert mesh.child_pids() == pids, "a service restarted during the soak"
    assert all(size > 0 for size in after.values())
    over = {n: round(g / MiB, 1) for n, g in growth.items() if g > RSS_GROWTH_BOUND}
    assert not over, f"resident memory grew beyond {RSS_GROWTH_BOUND // MiB} MiB: {over}"


# -- (c) decode flood -------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_8_concurrent_40_megapixel_pngs_are_all_answered_and_the_classifier_grows_by_at_most_1_gib(
    mesh: VisionRun,
) -> None:
    png = huge_png()
    pid = mesh.child_pid("classifier")
    assert pid is not None
    statuses: list[int | str] = []
    lock = threading.Lock()

    def send() -> None:
        try:
            with httpx.Client(base_url=mesh.url, timeout=CLIENT_TIMEOUT_S + 20) as api:
                status: int | str = api.post(
                    "/predict", files={"file": ("big.png", png, "image/png")}
                ).status_code
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        with lock:
            statuses.append(status)

    senders = [threading.Thread(target=send, daemon=True) for _ in range(DECODE_FLOOD)]
    started = time.monotonic()
    with PeakRss(pid) as memory:
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join()
    seconds = time.monotonic() - started
    settled = _settled_rss(pid)
    figures(
        "decode flood",
        png_kib=round(len(png) / 1024),
        declared="7000x5700",
        statuses=dict(Counter(statuses)),
        seconds=round(seconds, 1),
        classifier_rss_before_mib=round(memory.before / MiB),
        classifier_peak_rss_mib=round(memory.peak / MiB),
        classifier_vm_hwm_mib=round(vm_hwm_bytes(pid) / MiB),
        classifier_rss_after_mib=round(settled / MiB),
    )
    assert len(statuses) == DECODE_FLOOD
    assert all(isinstance(s, int) and (s == 200 or 400 <= s < 500) for s in statuses), statuses
    assert memory.peak - memory.before <= DECODE_PEAK_BOUND
    assert mesh.child_pid("classifier") == pid, "the classifier died under the flood"


def _settled_rss(pid: int, seconds: float = 2.0) -> int:
    """Resident memory a moment after a burst (allocators return memory lazily)."""
    time.sleep(seconds)
    return rss_bytes(pid)


# -- (d) label flood --------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_3000_labels_of_60_kib_streamed_to_train_are_refused_at_once_and_the_gateway_stays_small(
    mesh: VisionRun, client: httpx.Client
) -> None:
    assert wait_until(lambda: _uploads_free(client), 30, 0.5)
    pid = mesh.child_pid("gateway")
    assert pid is not None
    head = (
        f"POST /train HTTP/1.1\r\nHost: mesh\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)  # what we send is what was taken
    sock.settimeout(10)
    sock.connect(("127.0.0.1", mesh.http_port))
    sent = 0
    started = time.monotonic()
    with PeakRss(pid) as memory:
        sock.sendall(head.encode())
        try:
            for i in range(1, LABELS + 1):
                part = text_part(f"label{i}", b"L" * LABEL_BYTES)
                sock.sendall(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                sent += len(part)
                if status_so_far(sock) != "none":
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused and closed while the labels were still coming: what we want
        assert wait_until(lambda: status_so_far(sock) != "none", LABEL_FLOOD_ANSWER_S, 0.05)
        answered_s = time.monotonic() - started
        status = status_so_far(sock)
    sock.close()
    figures(
        "label flood",
        status=status,
        answered_s=round(answered_s, 2),
        sent_mib=round(sent / MiB, 2),
        of_mib=round(LABELS * LABEL_BYTES / MiB),
        gateway_rss_before_mib=round(memory.before / MiB),
        gateway_peak_rss_mib=round(memory.peak / MiB),
    )
    assert status in (400, 413)
    assert answered_s < LABEL_FLOOD_ANSWER_S
    assert sent < SENT_BEFORE_REFUSAL_BOUND, f"{sent} bytes were taken before the refusal"
    assert memory.peak - memory.before <= GATEWAY_GROWTH_BOUND
