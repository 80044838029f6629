"""The web client in a real browser (Debian's headless Chromium driven by Playwright) against the real
gateway and services on loopback. Screenshots land in test-artifacts/web/."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from detector_svc.checkpoints import import_yolo_checkpoint
from explain_svc.config import ExplainSettings
from explain_svc.server import create_explain_server
from tests.conftest import (
    LiveServer,
    encode,
    live_gateway,
    publish_random_model,
    start_classifier,
    ultralytics_asset,
)
from tests.support.detector import make_yolo_checkpoint, start_detector
from tests.support.digits import digit_images
from tests.support.trainer import running_trainer, trainer_settings
from vision.choices import ARCHITECTURES, CAM_METHODS, COLORMAPS
from vision.models.store import ModelStore

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "web"

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        pytest.fail("Chromium is missing: `make test` installs Debian's chromium package", pytrace=False)
    pytest.skip("Chromium is not installed (apt-get install chromium)", allow_module_level=True)

from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright  # noqa: E402


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """classifier_svc, explain_svc, detector_svc, trainer_svc and the gateway, all real, on loopback."""
    store = ModelStore(tmp_path_factory.mktemp("web") / "models")
    publish_random_model(store, "resnet18", classes=[f"class_{i}" for i in range(10)])
    publish_random_model(store, "pets", arch="smallcnn", classes=["cat", "dog", "bird"])
    import_yolo_checkpoint(store, make_yolo_checkpoint(store.root.parent / "yolo11n.pt"), "yolo11n")
    classifier, c_engine = start_classifier(store)
    explain, e_engine = create_explain_server(ExplainSettings(port=0, model_dir=store.root))
    detector, d_engine = start_detector(store)
    with (
        running_trainer(trainer_settings(store.root.parent)) as (trainer, _, _),
        live_gateway(
            classifier_addr=f"127.0.0.1:{classifier.port}",
            explain_addr=f"127.0.0.1:{explain.port}",
            detector_addr=f"127.0.0.1:{detector.port}",
            trainer_addr=f"127.0.0.1:{trainer.port}",
        ) as gateway,
    ):
        yield gateway
    detector.stop(0).wait()
    d_engine.close()
    explain.stop(0).wait()
    classifier.stop(0).wait()
    e_engine.close()
    c_engine.close()  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-quic",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, system: LiveServer, request: pytest.FixtureRequest) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and _unexpected(m) else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(system.url)
    yield page
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    context.close()
    assert not errors, f"console errors: {errors}"


def _unexpected(message: ConsoleMessage) -> bool:
    # A 4xx the test provokes on purpose is logged by Chromium as a failed resource load.
    return "the server responded with a status of 4" not in message.text


def test_classify_a_photo_and_see_the_top5_chart(page: Page) -> None:
    page.set_input_files("#file", str(ultralytics_asset("bus.jpg")))
    expect(page.locator("#prediction")).to_contain_text("resnet18 v1")
    expect(page.locator("#chart li")).to_have_count(5)
    expect(page.locator("#busy")).to_be_hidden()


def test_the_pages_option_lists_are_the_systems_choices(page: Page) -> None:
    """The page has no option list of its own: it reads them from the gateway's OpenAPI schema."""
    page.get_by_role("tab", name="Explain").click()
    expect(page.locator("#method option")).to_have_count(len(CAM_METHODS.names))
    assert [o.get_attribute("value") for o in page.locator("#method option").all()] == list(CAM_METHODS.names)
    assert page.locator("#method").input_value() == CAM_METHODS.default
    assert page.locator("#colormap option").all_inner_texts() == list(COLORMAPS.names)
    assert page.locator("#colormap").input_value() == COLORMAPS.default
    assert page.locator("#train-arch option").all_inner_texts() == list(ARCHITECTURES.names)


def test_explain_shows_the_overlay_next_to_the_original(page: Page) -> None:
    page.get_by_role("tab", name="Explain").click()
    page.select_option("#method", "gradcampp")
    page.set_input_files("#file", str(ultralytics_asset("zidane.jpg")))
    overlay = page.locator("#overlay")
    expect(overlay).to_be_visible()
    expect(overlay).to_have_attribute("src", re.compile(r"^data:image/jpeg;base64,"))
    expect(page.locator("#overlay-caption")).to_contain_text("gradcampp at layer4")
    assert page.locator("#original").is_visible()


def test_detect_draws_a_box_and_a_card_per_object(page: Page) -> None:
    page.get_by_role("tab", name="Detect").click()
    page.set_input_files("#file", str(ultralytics_asset("zidane.jpg")))
    expect(page.locator("#prediction")).to_contain_text("yolo11n v1")
    cards = page.locator("#objects li")
    expect(cards.first).to_be_visible()
    count = cards.count()
    assert count >= 1
    assert page.locator("#boxes rect").count() == count
    assert page.locator("#boxes").get_attribute("viewBox") == "0 0 1280 720"  # original-image pixels
    expect(cards.first).to_contain_text("%")


def test_choosing_another_model_classifies_with_it(page: Page) -> None:
    expect(page.locator("#model option[value=pets]")).to_have_count(1)
    page.select_option("#model", "pets")
    page.set_input_files("#file", str(ultralytics_asset("bus.jpg")))
    expect(page.locator("#prediction")).to_contain_text("pets v1")
    expect(page.locator("#chart li")).to_have_count(3)


def test_an_api_error_is_shown_plainly(page: Page, tmp_path: Path) -> None:
    fake = tmp_path / "notes.jpg"
    fake.write_text("this is not an image")
    page.set_input_files("#file", str(fake))
    expect(page.locator("#error")).to_be_visible()
    expect(page.locator("#error")).to_contain_text("not an image")
    expect(page.locator("#error")).to_contain_text("HTTP 400")


def test_pasting_an_image_classifies_it(page: Page, astronaut: object) -> None:
    data = encode(astronaut, "PNG")  # type: ignore[arg-type]
    page.evaluate(
        """async (bytes) => {
            const file = new File([new Uint8Array(bytes)], "pasted.png", {type: "image/png"});
            const data = new DataTransfer();
            data.items.add(file);
            document.dispatchEvent(new ClipboardEvent("paste", {clipboardData: data}));
        }""",
        list(data),
    )
    expect(page.locator("#chart li")).to_have_count(5)


def test_the_page_works_on_a_phone_sized_screen_and_with_the_keyboard(
    browser: Browser, system: LiveServer
) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.goto(system.url)
    page.get_by_role("tab", name="Classify").focus()
    page.keyboard.press("ArrowRight")
    expect(page.get_by_role("tab", name="Explain")).to_have_attribute("aria-selected", "true")
    page.set_input_files("#file", str(ultralytics_asset("bus.jpg")))
    expect(page.locator("#chart li")).to_have_count(5)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways on a phone ({width}px)"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "phone.png"), full_page=True)
    context.close()


def test_train_a_tiny_model_watch_it_and_classify_with_it(page: Page, tmp_path: Path) -> None:
    classes = ["0", "1"]  # scikit-learn's digits: 12 images of each, 32x32
    folders: dict[str, list[bytes]] = {label: [] for label in classes}
    for label, png in digit_images(size=32, per_class=12):
        if label in folders:
            folders[label].append(png)
    page.get_by_role("tab", name="Train").click()
    page.fill("#train-name", "webdigits")
    page.select_option("#train-arch", "smallcnn")
    page.fill("#train-epochs", "3")
    page.fill("#train-img-size", "32")
    page.uncheck("#train-freeze")
    page.uncheck("#train-pretrained")
    cards = page.locator(".class-card")
    for i, label in enumerate(classes):
        paths = []
        for j, png in enumerate(folders[label]):
            path = tmp_path / f"{label}-{j}.png"
            path.write_bytes(png)
            paths.append(str(path))
        cards.nth(i).locator(".class-name").fill(f"digit{label}")
        cards.nth(i).locator("input[type=file]").set_input_files(paths)
        expect(cards.nth(i).locator(".count")).to_have_text(f"{len(paths)} images")
    page.click("#start-training")
    expect(page.locator("#job-result")).to_be_visible(timeout=180_000)
    expect(page.locator("#per-class tbody tr")).to_have_count(2)
    expect(page.locator("#per-class caption")).to_contain_text("webdigits v1")
    expect(page.locator("#curves polyline.acc")).to_have_attribute("points", re.compile(r"\d.* \d.* \d"))
    page.wait_for_function("document.querySelector('#confusion').naturalWidth > 0")
    page.click("#use-model")
    expect(page.get_by_role("tab", name="Classify")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#model")).to_have_value("webdigits")
    page.set_input_files("#file", str(tmp_path / f"{classes[0]}-0.png"))
    expect(page.locator("#prediction")).to_contain_text("webdigits v1")
