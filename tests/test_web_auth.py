"""The web client against a gateway that requires credentials, in Debian's headless Chromium: the API-key
field (kept in localStorage, sent as X-API-Key on every request, the job's event stream included, which is
why it is read with fetch() and not EventSource), and the plain messages for 401, 403 and 429.

Real gateway, classifier_svc and trainer_svc on loopback, real keys made in the key file the gateway reads."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page, Request, expect

from gateway.config import GatewaySettings
from gateway.main import create_app
from tests.conftest import LiveServer, publish_random_model, start_classifier, ultralytics_asset
from tests.support.digits import digit_images
from tests.support.trainer import running_trainer, trainer_settings
from tests.test_web import ARTIFACTS, _unexpected, browser  # noqa: F401 -- browser: the fixture
from vision.models.store import ModelStore
from vision.security.keys import create_key
from vision.security.roles import Role
from vision.security.settings import AuthSettings

BAD_KEY = "vk_" + "A" * 43


@dataclass
class SecureSite:
    url: str
    keys: dict[str, str]  # name -> secret


@dataclass
class Visit:
    page: Page
    requests: list[Request] = field(default_factory=list)

    def use_key(self, secret: str) -> None:
        self.page.fill("#api-key", secret)
        self.page.press("#api-key", "Enter")

    def sent(self, path_pattern: str) -> list[Request]:
        return [r for r in self.requests if re.fullmatch(path_pattern, urlsplit(r.url).path)]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureSite]:
    root = tmp_path_factory.mktemp("web-auth")
    store = ModelStore(root / "models")
    publish_random_model(store, name="catalog", arch="smallcnn", classes=["cat", "dog"])
    keys_file = root / "auth" / "keys.json"
    keys = {
        name: create_key(keys_file, name, role, limits)[1]
        for name, role, limits in (
            ("viewer", Role.VIEWER, None),
            ("trainer", Role.TRAINER, None),
            ("slow", Role.VIEWER, {"rate": 1, "burst": 1}),
        )
    }
    classifier, engine = start_classifier(store)
    auth = AuthSettings(required=True, keys_file=keys_file, keys_reload_s=0.3)
    with running_trainer(trainer_settings(root)) as (trainer, _, _):
        settings = GatewaySettings(
            classifier_addr=f"127.0.0.1:{classifier.port}",
            trainer_addr=f"127.0.0.1:{trainer.port}",
            events_max_s=1.0,  # streams end during the job: the page must resume with Last-Event-ID
        )
        with LiveServer(create_app(settings, auth)) as live:
            yield SecureSite(live.url, keys)
    classifier.stop(0).wait()
    engine.close()  # type: ignore[attr-defined]


@pytest.fixture
def visit(browser: Browser, site: SecureSite, request: pytest.FixtureRequest) -> Iterator[Visit]:  # noqa: F811
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and _unexpected(m) else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    visit = Visit(page)
    page.on("request", lambda r: visit.requests.append(r))
    page.goto(site.url)
    yield visit
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    context.close()
    assert not errors, f"console errors: {errors}"


def fill_training_form(page: Page, tmp_path: Path, model_name: str, epochs: int = 3) -> None:
    """A tiny job: SmallCNN from scratch on 32x32 digits, 12 images of each of two classes."""
    page.get_by_role("tab", name="Train").click()
    page.fill("#train-name", model_name)
    expect(page.locator("#train-arch option[value=smallcnn]")).to_have_count(1)
    page.select_option("#train-arch", "smallcnn")
    page.fill("#train-epochs", str(epochs))
    page.fill("#train-img-size", "32")
    page.uncheck("#train-freeze")
    page.uncheck("#train-pretrained")
    cards = page.locator(".class-card")
    for i, label in enumerate(["0", "1"]):
        paths = []
        for j, (name, png) in enumerate(digit_images(size=32, per_class=12)):
            if name == label:
                path = tmp_path / f"{label}-{j}.png"
                path.write_bytes(png)
                paths.append(str(path))
        cards.nth(i).locator(".class-name").fill(f"digit{label}")
        cards.nth(i).locator("input[type=file]").set_input_files(paths)


def test_without_a_key_classify_says_the_page_needs_one_and_a_bad_key_is_refused(visit: Visit) -> None:
    page = visit.page
    page.set_input_files("#file", str(ultralytics_asset("bus.jpg")))
    error = page.locator("#error")
    expect(error).to_have_text(re.compile(r"^This page needs an API key: paste one above — .+ \(HTTP 401\)$"))
    assert "{" not in error.inner_text()  # the server's message, not its JSON
    assert not [r for r in visit.requests if "x-api-key" in r.headers]
    visit.use_key(BAD_KEY)  # applying a key classifies the image again
    expect(error).to_have_text(re.compile(r"^The API key was refused: .+ — .*not valid.* \(HTTP 401\)$"))


def test_a_viewer_key_classifies_and_survives_a_reload(visit: Visit, site: SecureSite) -> None:
    page, key = visit.page, site.keys["viewer"]
    expect(page.locator("#api-key")).to_have_attribute("type", "password")
    loaded = len(visit.requests)  # the page's first requests went without a key
    visit.use_key(key)
    expect(page.locator("#key-note")).to_contain_text("kept in this browser")
    page.set_input_files("#file", str(ultralytics_asset("bus.jpg")))
    expect(page.locator("#prediction")).to_contain_text("catalog v1")
    expect(page.locator("#error")).to_be_hidden()
    assert page.evaluate("localStorage.getItem('vision.apiKey')") == key
    keyed = [r for r in visit.requests[loaded:] if r.url.startswith(site.url) and "/static/" not in r.url]
    assert {urlsplit(r.url).path for r in keyed} >= {"/predict", "/models", "/openapi.json"}
    for sent in keyed:
        assert sent.headers.get("x-api-key") == key, sent.url

    page.reload()
    expect(page.locator("#api-key")).to_have_value(key)
    page.set_input_files("#file", str(ultralytics_asset("zidane.jpg")))
    expect(page.locator("#prediction")).to_contain_text("catalog v1")

    page.focus("#key-show")  # the key can be shown and cleared from the keyboard
    page.keyboard.press("Enter")
    expect(page.locator("#api-key")).to_have_attribute("type", "text")
    expect(page.locator("#key-show")).to_have_attribute("aria-pressed", "true")
    page.keyboard.press("Tab")
    expect(page.locator("#key-clear")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#api-key")).to_have_value("")
    assert page.evaluate("localStorage.getItem('vision.apiKey')") is None


def test_a_viewer_who_tries_to_train_is_told_the_role_does_not_allow_it(
    visit: Visit, site: SecureSite, tmp_path: Path
) -> None:
    visit.use_key(site.keys["viewer"])
    fill_training_form(visit.page, tmp_path, "viewer-model")
    visit.page.click("#start-training")
    expect(visit.page.locator("#error")).to_have_text(
        re.compile(r"^Your key's role does not allow this — .*trainer.* \(HTTP 403\)$")
    )
    expect(visit.page.locator("#job")).to_be_hidden()


def test_a_trainer_starts_a_job_and_its_progress_arrives_through_the_keyed_stream(
    visit: Visit, site: SecureSite, tmp_path: Path
) -> None:
    page, key = visit.page, site.keys["trainer"]
    visit.use_key(key)
    fill_training_form(page, tmp_path, "webauth")
    page.click("#start-training")
    expect(page.locator("#job-result")).to_be_visible(timeout=180_000)
    expect(page.locator("#per-class caption")).to_contain_text("webauth v1")
    expect(page.locator("#curves polyline.acc")).to_have_attribute("points", re.compile(r"\d.* \d.* \d"))
    expect(page.locator("#error")).to_be_hidden()
    streams = visit.sent(r"/jobs/[^/]+/events")
    assert streams, "the page never opened the job's event stream"
    for stream in streams:
        assert stream.resource_type == "fetch" and stream.headers.get("x-api-key") == key
    assert all(s.headers.get("last-event-id", "").isdigit() for s in streams[1:])
    confusion = page.locator("#confusion")  # a protected image: fetched with the key, shown as a blob
    expect(confusion).to_have_attribute("src", re.compile(r"^blob:"))
    page.wait_for_function("document.querySelector('#confusion').naturalWidth > 0")

    # The reader on its own, over the finished job's history: every event, then (the stream having ended
    # normally) one reconnection with Last-Event-ID, answered 204, and it stops.
    events_url = urlsplit(streams[0].url).path
    before = len(visit.sent(re.escape(events_url)))
    seen = page.evaluate(
        """async (url) => {
            const { openEventStream } = await import("/static/sse.js");
            const { withKey } = await import("/static/auth.js");
            const seen = [];
            return new Promise((resolve, reject) => openEventStream(url, {
                headers: () => withKey().headers || {},
                onEvent: (e) => seen.push({ type: e.type, id: e.id, data: e.data }),
                onDone: () => resolve(seen),
                onRefused: (response) => reject(new Error(`HTTP ${response.status}`)),
            }));
        }""",
        events_url,
    )
    kinds = [e["type"] for e in seen]
    assert "epoch" in kinds
    assert kinds[-1] == "state" and '"succeeded"' in seen[-1]["data"]
    ids = [int(e["id"]) for e in seen]
    assert ids == sorted(ids) and ids[-1] > 0
    again = visit.sent(re.escape(events_url))[before:]
    assert [r.headers.get("last-event-id") for r in again] == [None, str(ids[-1])]
    assert again[-1].response() is not None and again[-1].response().status == 204  # type: ignore[union-attr]


def test_a_rate_limited_key_is_told_when_to_try_again(visit: Visit, site: SecureSite) -> None:
    page = visit.page
    visit.use_key(site.keys["slow"])  # 1 request/s, burst 1: the page's own requests use it up
    page.set_input_files("#file", str(ultralytics_asset("bus.jpg")))
    page.set_input_files("#file", str(ultralytics_asset("zidane.jpg")))
    expect(page.locator("#error")).to_have_text(
        re.compile(r"^Too many requests: try again in \d+ s — over the rate limit .* \(HTTP 429\)$")
    )
