"""Issue 11, trainer side: what a client sends is checked as it is meant, and what it reads back names nothing
of the server (no absolute paths, no library or transport text; an error id points to the log instead).

Links out of the datasets root, names with dots, NFC labels, a full disk, upload limits, error ids, and
ListJobs paging values. Each test is named after the behaviour it holds the service to; those not marked
fast run a real trainer_svc on loopback (`tests.support.trainer`).
"""

from __future__ import annotations

import errno
import os
import re
import unicodedata
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.support.digits import digit_images, write_image_folder
from tests.support.status import error_kind
from tests.support.trainer import digits_spec, running_trainer, trainer_settings, upload
from trainer_svc import convert
from trainer_svc.jobs.uploads import UploadLimits, UploadWriter
from trainer_svc.jobs.worker import failure_reason
from trainer_svc.training.config import TrainConfig, validate_class_names
from trainer_svc.training.data import load_image_folder
from vision.errors import InvalidArgument
from vision.v1 import trainer_pb2

ERROR_ID = re.compile(r"error id [0-9a-f]{8}\b")


# -- defect 11: trainer parts -------------------------------------------------------------------------------
def test_a_class_folder_linked_outside_the_datasets_root_is_refused_naming_the_folder(tmp_path: Path) -> None:
    datasets = tmp_path / "datasets"
    write_image_folder(datasets / "ds", size=32, per_class=6)
    write_image_folder(tmp_path / "outside", size=32, per_class=6)
    (datasets / "ds" / "cat").symlink_to(tmp_path / "outside" / "3", target_is_directory=True)
    (datasets / "shared").mkdir()
    (datasets / "ds2").mkdir()
    for digit in ("1", "2"):  # a link that stays inside the datasets root is fine
        os.rename(datasets / "ds" / digit, datasets / "shared" / digit)
        (datasets / "ds2" / digit).symlink_to(datasets / "shared" / digit, target_is_directory=True)
    settings = trainer_settings(tmp_path, datasets_dir=datasets)
    with running_trainer(settings) as (_, _, stub):
        spec = digits_spec(image_folder=trainer_pb2.ImageFolderDataset(path="ds"), class_names=[])
        with pytest.raises(grpc.RpcError) as refused:
            stub.CreateJob(iter([trainer_pb2.CreateJobRequest(spec=spec)]), timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = refused.value.details() or ""
    assert "'ds/cat' is a link to outside the trainer's datasets directory" in details
    assert str(tmp_path) not in details
    # The worker checks again with the same rule; a link that stays inside the datasets root is fine.
    split = load_image_folder(datasets / "ds2", 0.2, 0, 5, within=datasets)
    assert split.class_counts() == {"1": 6, "2": 6}
    (datasets / "ds2" / "2" / "elsewhere.png").symlink_to(tmp_path / "outside" / "4" / "00024.png")
    with pytest.raises(InvalidArgument, match=r"'ds2/2/elsewhere\.png' is a link to outside"):
        load_image_folder(datasets / "ds2", 0.2, 0, 5, within=datasets)


@pytest.mark.fast
def test_names_with_inner_dots_are_accepted_and_nfc_lookalike_labels_are_one_class(tmp_path: Path) -> None:
    validate_class_names(["...", "model..1", "v1.2", ".hidden-ish"])
    nfd = unicodedata.normalize("NFD", "café")
    spec = digits_spec(class_names=[nfd, "thé"])
    config = convert.job_spec_to_config(spec, trainer_settings(tmp_path))
    assert config.class_names == ["café", "thé"]  # stored NFC
    images = [image for label, image in digit_images(16, per_class=1) if label in ("0", "1")]
    writer = UploadWriter(tmp_path / "uploads", config.class_names, UploadLimits())
    for index, (label, data) in enumerate(zip((nfd, "thé"), images, strict=True)):
        chunk = trainer_pb2.ImageChunk(
            file_index=index, class_name=label, file_name="holiday..0.png", data=data, last=True
        )
        writer.add(chunk)  # the NFD spelling finds the NFC class; 'holiday..0.png' is a fine name
    assert writer.finish() == {0: 1, 1: 1}
    writer.abort()


@pytest.mark.fast
@pytest.mark.parametrize("name", [".", "..", "a/b", "a\\b", "x\x00y"])
def test_only_dot_names_separators_and_control_characters_are_refused_in_file_names(
    tmp_path: Path, name: str
) -> None:
    writer = UploadWriter(tmp_path / "uploads", ["a", "b"], UploadLimits())
    chunk = trainer_pb2.ImageChunk(file_index=0, class_name="a", file_name=name, data=b"x", last=True)
    with pytest.raises(InvalidArgument, match="unacceptable name"):
        writer.add(chunk)
    writer.abort()


def test_a_full_disk_while_storing_an_upload_answers_storage_full_and_keeps_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = trainer_settings(tmp_path)
    real_write = Path.write_bytes
    uploads_dir = (settings.data_dir / "uploads").resolve()

    def full(self: Path, data: Any) -> int:
        if self.resolve().is_relative_to(uploads_dir):
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", full)
    with running_trainer(settings) as (_, _, stub):
        with pytest.raises(grpc.RpcError) as refused:
            stub.CreateJob(upload(digits_spec(), digit_images(16, per_class=5)), timeout=60)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_kind(refused.value) == "storage_full"
        details = refused.value.details() or ""
        assert "the trainer's disk is full" in details and str(tmp_path) not in details
        assert list(uploads_dir.iterdir()) == []


def test_upload_limits_answer_limit_exceeded_so_the_gateway_says_413(tmp_path: Path) -> None:
    settings = trainer_settings(tmp_path, max_upload_files=3)
    with running_trainer(settings) as (_, _, stub), pytest.raises(grpc.RpcError) as refused:
        stub.CreateJob(upload(digits_spec(), digit_images(16, per_class=1)), timeout=60)
    assert refused.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert error_kind(refused.value) == "limit_exceeded"
    assert "more than 3 files" in (refused.value.details() or "")


def test_download_errors_and_server_paths_reach_clients_only_as_an_error_id(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = trainer_settings(tmp_path, datasets_dir=tmp_path / "datasets")
    with running_trainer(settings) as (_, _, stub):
        pretrained = digits_spec(architecture=trainer_pb2.ARCHITECTURE_RESNET18, pretrained=True)
        with pytest.raises(grpc.RpcError) as offline:
            stub.CreateJob(upload(pretrained, []), timeout=30)
        missing = digits_spec(image_folder=trainer_pb2.ImageFolderDataset(path="nowhere"), class_names=[])
        with pytest.raises(grpc.RpcError) as absent:
            stub.CreateJob(iter([trainer_pb2.CreateJobRequest(spec=missing)]), timeout=30)
        outside = digits_spec(image_folder=trainer_pb2.ImageFolderDataset(path="/etc"), class_names=[])
        with pytest.raises(grpc.RpcError) as escaped:
            stub.CreateJob(iter([trainer_pb2.CreateJobRequest(spec=outside)]), timeout=30)
    message = offline.value.details() or ""
    assert offline.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "could not be downloaded" in message and ERROR_ID.search(message)
    assert "127.0.0.1" not in message and "http" not in message
    error_id = ERROR_ID.search(message).group(0).split()[-1]  # type: ignore[union-attr]
    assert any(error_id in record.getMessage() for record in caplog.records)  # the details are in the log
    for refused in (absent, escaped):
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert str(tmp_path) not in (refused.value.details() or "")
    assert "'nowhere' does not exist" in (absent.value.details() or "")


@pytest.mark.fast
def test_an_unexpected_training_error_reaches_job_error_as_an_error_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = TrainConfig.create("digits", architecture="smallcnn", class_names=["a", "b"])
    exc = ConnectionError("HTTPSConnectionPool(host='api.kaggle.com', port=443): /srv/data/x")
    reason = failure_reason(exc, config, "job1")
    assert ERROR_ID.search(reason) and "kaggle" not in reason and "/srv" not in reason
    disk = failure_reason(OSError(errno.ENOSPC, "No space left on device", "/srv/data/jobs/x"), config)
    assert disk == "the trainer's disk is full: the job could not write its checkpoints or model"


# -- ListJobs paging: a value it cannot use is INVALID_ARGUMENT naming the field, never INTERNAL ------------
@pytest.mark.parametrize(
    "request_fields",
    [
        {"page_token": "9" * 30},  # beyond SQLite's 64-bit integers
        {"page_token": "9" * 19},
        {"page_token": "²"},  # a Unicode digit that int() refuses
        {"page_token": "١٢"},  # Arabic-Indic digits, which int() would read
        {"page_token": "-1"},
        {"page_token": " 1"},
        {"page_token": "x" * 10_000},
        {"page_size": -1},
        {"page_size": 501},
        {"page_size": 2**31 - 1},
    ],
)
def test_list_jobs_refuses_a_page_token_or_size_it_cannot_use_as_invalid_argument_naming_the_field(
    trainer_stub: Any, request_fields: dict[str, Any]
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        trainer_stub.ListJobs(trainer_pb2.ListJobsRequest(**request_fields), timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_kind(refused.value) == "invalid_argument"
    assert next(iter(request_fields)) in (refused.value.details() or "")


def test_list_jobs_accepts_every_page_token_of_up_to_18_ascii_digits(trainer_stub: Any) -> None:
    for token in ("0", "1", "000000000000000002", "9" * 18):
        page = trainer_stub.ListJobs(trainer_pb2.ListJobsRequest(page_token=token, page_size=500), timeout=10)
        assert list(page.jobs) == [] and page.next_page_token == ""


@pytest.fixture(scope="module")
def trainer_stub(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with running_trainer(trainer_settings(tmp_path_factory.mktemp("paging"))) as (_, _, stub):
        yield stub
