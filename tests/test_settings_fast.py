"""Typed settings: each service reads its own prefixed variables and the shared un-prefixed ones, and refuses
out-of-range values with a pydantic ValidationError naming the field, before anything starts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from classifier_svc.config import ClassifierSettings
from detector_svc.config import DetectorSettings
from explain_svc.config import ExplainSettings
from gateway.config import GatewaySettings
from trainer_svc.config import TrainerSettings
from vision.settings import ServiceSettings

pytestmark = pytest.mark.fast

# class, its prefix, its default port
SERVICES: dict[str, tuple[type[BaseSettings], str, int]] = {
    "vision": (ServiceSettings, "VISION_", 0),
    "classifier": (ClassifierSettings, "VISION_CLASSIFIER_", 50051),
    "explain": (ExplainSettings, "VISION_EXPLAIN_", 50052),
    "detector": (DetectorSettings, "VISION_DETECTOR_", 50053),
    "trainer": (TrainerSettings, "VISION_TRAINER_", 50054),
    "gateway": (GatewaySettings, "VISION_GATEWAY_", 8000),
}
GRPC_SERVICES = [name for name in SERVICES if name != "gateway"]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """No VISION_* variable from the developer's shell or the Makefile leaks in."""
    import os

    for name in list(os.environ):
        if name.startswith("VISION_"):
            monkeypatch.delenv(name)
    yield monkeypatch


def field_errors(caught: pytest.ExceptionInfo[ValidationError]) -> set[str]:
    return {str(error["loc"][0]) for error in caught.value.errors()}


@pytest.mark.parametrize("service", SERVICES)
def test_defaults_with_no_environment(service: str) -> None:
    cls, _prefix, port = SERVICES[service]
    settings = cls()
    assert settings.port == port  # type: ignore[attr-defined]
    assert settings.host == "127.0.0.1"  # type: ignore[attr-defined]


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_reads_its_own_prefix_only(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cls, prefix, _port = SERVICES[service]
    monkeypatch.setenv(f"{prefix}PORT", "6123")
    monkeypatch.setenv(f"{prefix}HOST", "0.0.0.0")
    for other, (_, other_prefix, _) in SERVICES.items():
        if other_prefix != prefix and other != "vision":
            monkeypatch.setenv(f"{other_prefix}PORT", "7000")  # someone else's port: must not be read
    settings = cls()
    assert (settings.host, settings.port) == ("0.0.0.0", 6123)  # type: ignore[attr-defined]


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize("port", ["-1", "65536", "80.5", "http"])
def test_a_port_out_of_range_or_not_a_number_is_refused(
    service: str, port: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cls, prefix, _ = SERVICES[service]
    monkeypatch.setenv(f"{prefix}PORT", port)
    with pytest.raises(ValidationError) as caught:
        cls()
    assert field_errors(caught) == {"port"}


@pytest.mark.parametrize("service", SERVICES)
def test_the_shared_variables_have_no_service_prefix(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cls, prefix, _ = SERVICES[service]
    monkeypatch.setenv("VISION_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("VISION_LOG_JSON", "true")
    monkeypatch.setenv("VISION_MAX_IMAGE_BYTES", "1234567")
    if prefix != "VISION_":
        monkeypatch.setenv(f"{prefix}LOG_LEVEL", "ERROR")  # not the name of the shared setting
    settings = cls()
    assert settings.log_level == "DEBUG" and settings.log_json is True  # type: ignore[attr-defined]
    assert settings.max_image_bytes == 1234567  # type: ignore[attr-defined]
    assert settings.max_message_bytes > 1234567  # type: ignore[attr-defined]


@pytest.mark.parametrize("service", GRPC_SERVICES)
def test_every_grpc_service_finds_the_model_store_in_vision_model_dir(
    service: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cls, prefix, _ = SERVICES[service]
    assert cls().model_dir == Path("var/models")  # type: ignore[attr-defined]
    monkeypatch.setenv("VISION_MODEL_DIR", str(tmp_path))
    if prefix != "VISION_":
        monkeypatch.setenv(f"{prefix}MODEL_DIR", "/elsewhere")  # not the name of the shared setting
    assert cls().model_dir == tmp_path  # type: ignore[attr-defined]


@pytest.mark.parametrize("service", GRPC_SERVICES)
@pytest.mark.parametrize(
    ("variable", "value", "field"),
    [
        ("MAX_WORKERS", "0", "max_workers"),
        ("GRACE_SECONDS", "-1", "grace_seconds"),
        ("SHUTDOWN_DELAY_SECONDS", "-0.5", "shutdown_delay_seconds"),
    ],
)
def test_server_settings_out_of_range_are_refused(
    service: str, variable: str, value: str, field: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cls, prefix, _ = SERVICES[service]
    monkeypatch.setenv(f"{prefix}{variable}", value)
    with pytest.raises(ValidationError) as caught:
        cls()
    assert field_errors(caught) == {field}


def test_vision_image_limits_come_from_the_shared_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VISION_MAX_IMAGE_BYTES", "1000")
    monkeypatch.setenv("VISION_MAX_IMAGE_PIXELS", "2000")
    limits = ClassifierSettings().image_limits
    assert (limits.max_bytes, limits.max_pixels) == (1000, 2000)


MODEL_SERVICES = {"classifier": ClassifierSettings, "explain": ExplainSettings, "detector": DetectorSettings}


@pytest.mark.parametrize(
    ("service", "variable", "value", "field"),
    [
        ("classifier", "VISION_CLASSIFIER_MAX_BATCH_SIZE", "0", "max_batch_size"),
        ("classifier", "VISION_CLASSIFIER_MAX_BATCH_SIZE", "513", "max_batch_size"),
        ("classifier", "VISION_CLASSIFIER_MAX_BATCH_DELAY_MS", "1001", "max_batch_delay_ms"),
        ("classifier", "VISION_CLASSIFIER_MAX_QUEUE", "0", "max_queue"),
        ("classifier", "VISION_CLASSIFIER_POLL_INTERVAL_S", "0", "poll_interval_s"),
        ("classifier", "VISION_CLASSIFIER_MAX_TOP_K", "0", "max_top_k"),
        ("classifier", "VISION_CLASSIFIER_PRETRAINED_TIMEOUT_S", "0", "pretrained_timeout_s"),
        ("explain", "VISION_EXPLAIN_MAX_BATCH_SIZE", "257", "max_batch_size"),
        ("explain", "VISION_EXPLAIN_MAX_BATCH_DELAY_MS", "-1", "max_batch_delay_ms"),
        ("explain", "VISION_EXPLAIN_MAX_OVERLAY_SIDE", "63", "max_overlay_side"),
        ("explain", "VISION_EXPLAIN_OVERLAY_SIDE", "63", "overlay_side"),
        ("detector", "VISION_DETECTOR_MAX_BATCH_SIZE", "257", "max_batch_size"),
        ("detector", "VISION_DETECTOR_MAX_DET", "100001", "max_det"),
        ("detector", "VISION_DETECTOR_MAX_IMGSZ", "31", "max_imgsz"),
        ("detector", "VISION_DETECTOR_MAX_IMGSZ", "8193", "max_imgsz"),
        ("detector", "VISION_DETECTOR_FETCH_TIMEOUT_S", "0", "fetch_timeout_s"),
    ],
)
def test_model_service_values_out_of_range_are_refused(
    service: str, variable: str, value: str, field: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError) as caught:
        MODEL_SERVICES[service]()
    assert field_errors(caught) == {field}


def test_the_default_overlay_side_must_fit_within_the_largest_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VISION_EXPLAIN_MAX_OVERLAY_SIDE", "600")  # below the default overlay side, 640
    with pytest.raises(
        ValidationError, match=r"overlay_side \(640\) must not exceed max_overlay_side \(600\)"
    ):
        MODEL_SERVICES["explain"]()
    monkeypatch.setenv("VISION_EXPLAIN_OVERLAY_SIDE", "512")
    assert MODEL_SERVICES["explain"]().overlay_side == 512


@pytest.mark.parametrize(
    ("service", "batch", "queue"), [("classifier", 16, 256), ("explain", 8, 128), ("detector", 8, 64)]
)
def test_model_services_have_their_own_batch_defaults_and_read_them_prefixed(
    service: str, batch: int, queue: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    cls = MODEL_SERVICES[service]
    assert (cls().max_batch_size, cls().max_queue) == (batch, queue)
    prefix = SERVICES[service][1]
    monkeypatch.setenv(f"{prefix}MAX_BATCH_SIZE", "3")
    monkeypatch.setenv(f"{prefix}MAX_BATCH_DELAY_MS", "0")
    monkeypatch.setenv(f"{prefix}DEFAULT_MODEL", "cats")
    settings = cls()
    assert (settings.max_batch_size, settings.max_batch_delay_ms, settings.default_model) == (3, 0.0, "cats")


@pytest.mark.parametrize(
    ("variable", "value", "field"),
    [
        ("VISION_GATEWAY_TIMEOUT_S", "0", "timeout_s"),
        ("VISION_GATEWAY_HEALTH_TIMEOUT_S", "-1", "health_timeout_s"),
        ("VISION_GATEWAY_RETRY_AFTER_S", "-1", "retry_after_s"),
        ("VISION_GATEWAY_TRAIN_TIMEOUT_S", "0", "train_timeout_s"),
        ("VISION_GATEWAY_CLASSIFIER_ADDR", "  ", "classifier_addr"),
        ("VISION_GATEWAY_CORS_ORIGINS", "not json", "cors_origins"),
    ],
)
def test_gateway_values_out_of_range_are_refused(
    variable: str, value: str, field: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises((ValidationError, ValueError)) as caught:
        GatewaySettings()
    assert field in str(caught.value)


def test_the_gateway_knows_only_the_backends_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    assert GatewaySettings().backends() == {"classifier": "127.0.0.1:50051"}
    monkeypatch.setenv("VISION_GATEWAY_CLASSIFIER_ADDR", "classifier:50051")
    monkeypatch.setenv("VISION_GATEWAY_EXPLAIN_ADDR", "explain:50052")
    monkeypatch.setenv("VISION_GATEWAY_CORS_ORIGINS", '["https://example.org"]')
    settings = GatewaySettings()
    assert settings.backends() == {"classifier": "classifier:50051", "explain": "explain:50052"}
    assert settings.cors_origins == ["https://example.org"]


def test_the_gateway_upload_limits_read_the_shared_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VISION_MAX_IMAGE_BYTES", "1000")
    monkeypatch.setenv("VISION_MAX_UPLOAD_FILES", "7")
    monkeypatch.setenv("VISION_MAX_UPLOAD_BYTES", "9000")
    settings = GatewaySettings()
    assert (settings.max_image_bytes, settings.train_max_files, settings.train_max_bytes) == (1000, 7, 9000)
    assert settings.max_upload_bytes > 1000 and settings.max_train_body_bytes > 9000
    monkeypatch.setenv("VISION_MAX_UPLOAD_FILES", "0")
    with pytest.raises(ValidationError):
        GatewaySettings()
