"""`vision classify`, `vision detect`, `vision explain` over files, folders and globs: against the real
services (answers equal to what the gateway's /predict, /detect and /explain give for the same images), in
this process (`--local`), with an unreadable file reported on its line, and an interrupted run (SIGINT)
resumed by running the same command again."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import encode, live_gateway, publish_random_model, start_classifier, ultralytics_asset
from tests.support.digits import write_image_folder
from vision.batch.inputs import expand
from vision.batch.results import ResultsFile
from vision.cli import main
from vision.errors import InvalidArgument
from vision.models.store import ModelStore

CLASSES = [f"class_{i}" for i in range(10)]


def read_jsonl(path: Path) -> dict[str, dict[str, Any]]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    by_path = {r["path"]: r for r in records}
    assert len(by_path) == len(records), "a path was written twice"
    return by_path


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory, astronaut: Any) -> Path:
    """Real photos in nested folders, a few digits, a file that is not an image and one that is no image
    format at all by name (ignored in folders)."""
    root = tmp_path_factory.mktemp("photos")
    (root / "street").mkdir()
    for name in ("bus.jpg", "zidane.jpg"):
        (root / "street" / name).write_bytes(ultralytics_asset(name).read_bytes())
    (root / "astronaut.png").write_bytes(encode(astronaut, "PNG"))
    write_image_folder(root / "digits", size=32, per_class=1)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff this is not really a JPEG")
    (root / "notes.txt").write_text("not an image, and not named like one")
    return root


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A real classifier_svc and explain_svc on loopback, and the real gateway in front of them."""
    from explain_svc.config import ExplainSettings
    from explain_svc.server import create_explain_server

    store = ModelStore(tmp_path_factory.mktemp("store") / "models")
    publish_random_model(store, "cnn", arch="smallcnn", classes=CLASSES)
    classifier, classifier_engine = start_classifier(store)
    explain, explain_engine = create_explain_server(ExplainSettings(port=0, model_dir=store.root))
    addresses = {"classifier": f"127.0.0.1:{classifier.port}", "explain": f"127.0.0.1:{explain.port}"}
    with (
        live_gateway(classifier_addr=addresses["classifier"], explain_addr=addresses["explain"]) as gw,
        httpx.Client(base_url=gw.url, timeout=60) as http,
    ):
        yield {"store": store, "http": http, **addresses}
    explain.stop(0).wait()
    classifier.stop(0).wait()
    explain_engine.close()
    classifier_engine.close()  # type: ignore[attr-defined]


def predict(http: httpx.Client, path: Path, top_k: int) -> dict[str, Any]:
    reply = http.post(
        "/predict", files={"file": (path.name, path.read_bytes())}, data={"model": "cnn", "top_k": str(top_k)}
    )
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


# -- inputs and the results file ---------------------------------------------------------------------------
@pytest.mark.fast
def test_inputs_are_files_folders_recursively_and_globs_sorted_and_each_once(photos: Path) -> None:
    found = expand([str(photos), str(photos / "street" / "bus.jpg"), str(photos / "**" / "*.jpg")])
    names = [p.relative_to(photos).as_posix() for p in found]
    assert names == sorted(names) and len(names) == len(set(names))
    assert {"astronaut.png", "broken.jpg", "street/bus.jpg", "street/zidane.jpg"} <= set(names)
    assert len([n for n in names if n.startswith("digits/")]) == 10 and "notes.txt" not in names
    assert expand([str(photos / "notes.txt")]) == [photos / "notes.txt"]  # named explicitly: kept
    with pytest.raises(InvalidArgument, match="no such file or folder"):
        expand([str(photos / "typo.jpg")])
    with pytest.raises(InvalidArgument, match="no images"):
        expand([str(photos / "*.gif")])


@pytest.mark.fast
@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_rerun_skips_done_images_retries_errors_and_drops_a_line_cut_by_a_crash(
    tmp_path: Path, suffix: str
) -> None:
    path = tmp_path / f"results{suffix}"
    columns = ("path", "label", "error")
    with ResultsFile(path, columns) as results:
        results.write({"path": "a.jpg", "label": "cat"})
        results.write({"path": "b.jpg", "error": "the service was unavailable"})
        results.write({"path": "c.jpg", "label": "dog"})
    with path.open("a") as handle:
        handle.write('{"path": "d.jpg", "lab' if suffix == ".jsonl" else "d.jpg,bi")  # killed mid-line
    resumed = ResultsFile(path, columns).open()
    resumed.write({"path": "b.jpg", "label": "bird"})
    resumed.close()
    assert resumed.done == {"a.jpg", "c.jpg"}
    lines = path.read_text().splitlines()
    body = lines[1:] if suffix == ".csv" else lines
    assert [line.split(",")[0] if suffix == ".csv" else json.loads(line)["path"] for line in body] == [
        "a.jpg", "c.jpg", "b.jpg",
    ]  # fmt: skip
    assert suffix == ".jsonl" or lines[0] == "path,label,error"


@pytest.mark.fast
def test_an_output_that_is_not_jsonl_or_csv_or_has_another_header_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"must end in \.jsonl or \.csv"):
        ResultsFile(tmp_path / "out.txt", ["path"])
    (tmp_path / "other.csv").write_text("name,size\nx,1\n")
    with pytest.raises(InvalidArgument, match="header differs"):
        ResultsFile(tmp_path / "other.csv", ["path", "error"]).open()


# -- classify ------------------------------------------------------------------------------------------------
def test_classify_a_folder_gives_every_image_the_answer_predict_gives_and_reports_the_broken_file(
    mesh: dict[str, Any], photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results.jsonl"
    argv = ["classify", str(photos), "--server", mesh["classifier"], "--model", "cnn", "--top-k", "3"]
    assert main([*argv, "--output", str(out), "--no-progress"]) == 0
    assert "1 errors" in capsys.readouterr().err
    records = read_jsonl(out)
    assert set(records) == {str(p) for p in expand([str(photos)])}  # complete: one line per image
    broken = records.pop(str(photos / "broken.jpg"))
    assert "image" in broken["error"] and "classes" not in broken
    for path, record in records.items():
        body = predict(mesh["http"], Path(path), top_k=3)
        assert (record["model"], record["version"]) == (body["model"]["name"], body["model"]["version"])
        got = [(c["id"], c["label"]) for c in record["classes"]]
        assert got == [(c["class_id"], c["class"]) for c in body["top5"]]
        # Batched with other requests or alone, the same float32 arithmetic up to summation order.
        assert [c["score"] for c in record["classes"]] == pytest.approx(
            [c["confidence"] for c in body["top5"]], rel=1e-5, abs=1e-7
        )


def test_classify_local_answers_as_the_service_does_and_writes_csv(
    mesh: dict[str, Any], photos: Path, tmp_path: Path
) -> None:
    served, local = tmp_path / "served.jsonl", tmp_path / "local.csv"
    common = [
        "classify",
        str(photos / "street"),
        str(photos / "astronaut.png"),
        "--model",
        "cnn",
        "--no-progress",
    ]
    assert main([*common, "--server", mesh["classifier"], "--output", str(served)]) == 0
    assert main([*common, "--local", "--model-dir", str(mesh["store"].root), "--output", str(local)]) == 0
    import csv

    rows = {r["path"]: r for r in csv.DictReader(local.open())}
    for path, record in read_jsonl(served).items():
        row = rows.pop(path)
        assert (row["model"], row["version"], row["label"]) == ("cnn", "1", record["label"])
        classes = json.loads(row["classes"])
        assert [c["id"] for c in classes] == [c["id"] for c in record["classes"]]
        assert [c["score"] for c in classes] == pytest.approx(
            [c["score"] for c in record["classes"]], rel=1e-5
        )
    assert not rows


def test_classify_without_a_service_says_how_to_run_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(
        [
            "classify",
            str(ultralytics_asset("bus.jpg")),
            "--server",
            "127.0.0.1:9",
            "--output",
            str(tmp_path / "r.jsonl"),
        ]
    )
    assert status == 2
    assert "no classifier service answers at 127.0.0.1:9" in capsys.readouterr().err


def test_ctrl_c_stops_cleanly_and_the_same_command_resumes_where_it_stopped(
    mesh: dict[str, Any], tmp_path: Path
) -> None:
    data = write_image_folder(tmp_path / "digits", size=64, per_class=40)  # 400 images
    out = tmp_path / "digits.jsonl"
    argv = ["classify", str(data), "--server", mesh["classifier"], "--model", "cnn", "--output", str(out)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vision.cli", *argv, "--concurrency", "1"],
        env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not (out.exists() and len(out.read_text().splitlines()) >= 20):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it was interrupted"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "run the same command again" in err and "Traceback" not in err
    first = read_jsonl(out)
    assert 20 <= len(first) < 400 and all("error" not in r for r in first.values())
    assert main([*argv, "--no-progress"]) == 0
    everything = read_jsonl(out)  # each path once: nothing done twice, nothing lost
    assert set(everything) == {str(p) for p in expand([str(data)])}
    assert {k: everything[k] for k in first} == first


# -- explain -------------------------------------------------------------------------------------------------
def test_explain_writes_the_overlays_explain_returns_next_to_an_index(
    mesh: dict[str, Any], photos: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cams"
    inputs = [str(photos / "street"), str(photos / "broken.jpg")]
    argv = [
        "explain",
        *inputs,
        "--server",
        mesh["explain"],
        "--model",
        "cnn",
        "--method",
        "gradcam",
        "--out",
        str(out),
    ]
    assert main([*argv, "--no-progress"]) == 0
    records = read_jsonl(out / "index.jsonl")
    assert "error" in records.pop(str(photos / "broken.jpg"))
    assert len(records) == 2
    for path, record in records.items():
        reply = mesh["http"].post(
            "/explain",
            files={"file": (Path(path).name, Path(path).read_bytes())},
            data={"model": "cnn", "method": "gradcam"},
        )
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert (record["method"], record["layer"]) == (body["method"], body["layer"])
        assert record["target"]["label"] == body["target_class"]["class"]
        assert record["prediction"]["label"] == body["prediction"]["class"]
        assert body["overlay_image"].startswith("data:image/jpeg;base64,")
        overlay = base64.b64decode(body["overlay_image"].split(",", 1)[1])
        assert record["overlay"].endswith(".overlay.jpg")
        assert (out / record["overlay"]).read_bytes() == overlay
        assert (out / record["heatmap"]).read_bytes() == base64.b64decode(body["heatmap"].split(",", 1)[1])


# -- detect --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from detector_svc.checkpoints import import_yolo_checkpoint
    from tests.support.detector import make_yolo_checkpoint, start_detector

    store = ModelStore(tmp_path_factory.mktemp("store") / "models")
    import_yolo_checkpoint(
        store, make_yolo_checkpoint(tmp_path_factory.mktemp("w") / "yolo11n.pt"), "yolo11n"
    )
    server, engine = start_detector(store, max_batch_delay_ms=20)
    address = f"127.0.0.1:{server.port}"
    with (
        live_gateway(classifier_addr="127.0.0.1:9", detector_addr=address) as gw,
        httpx.Client(base_url=gw.url, timeout=60) as http,
    ):
        yield {"address": address, "http": http, "store": store}
    server.stop(0).wait()
    engine.close()


def test_detect_gives_the_boxes_detect_returns_and_saves_the_annotated_images(
    detector: dict[str, Any], photos: Path, tmp_path: Path
) -> None:
    out, drawn = tmp_path / "detections.jsonl", tmp_path / "annotated"
    inputs = [str(photos / "street" / "*.jpg"), str(photos / "broken.jpg")]
    argv = ["detect", *inputs, "--server", detector["address"], "--conf", "0.2", "--output", str(out)]
    assert main([*argv, "--annotated", str(drawn), "--no-progress"]) == 0
    records = read_jsonl(out)
    assert "error" in records.pop(str(photos / "broken.jpg"))
    assert len(records) == 2 and all(r["boxes"] for r in records.values())
    for path, record in records.items():
        reply = detector["http"].post(
            "/detect", files={"file": (Path(path).name, Path(path).read_bytes())}, data={"conf": "0.2"}
        )
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert record["model"] == body["model"]["name"] and record["version"] == body["model"]["version"]
        assert [(b["class_id"], b["class_name"]) for b in record["boxes"]] == [
            (d["class_id"], d["class"]) for d in body["detections"]
        ]
        for box, d in zip(record["boxes"], body["detections"], strict=True):
            got = [box["x1"], box["y1"], box["x2"], box["y2"], box["confidence"]]
            want = [d["bbox"]["x1"], d["bbox"]["y1"], d["bbox"]["x2"], d["bbox"]["y2"], d["confidence"]]
            assert got == pytest.approx(want, rel=1e-5, abs=1e-3)
        annotated = base64.b64decode(body["annotated_image"].split(",", 1)[1])
        assert (drawn / record["annotated"]).read_bytes() == annotated


def test_detect_local_starts_the_detector_for_the_run_and_answers_as_it_does(
    detector: dict[str, Any], photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = [str(photos / "street")]
    served, local = tmp_path / "served.jsonl", tmp_path / "local.jsonl"
    assert main(["detect", *inputs, "--server", detector["address"], "--output", str(served)]) == 0
    argv = ["detect", *inputs, "--local", "--model-dir", str(detector["store"].root), "--output", str(local)]
    assert main(argv) == 0
    assert "started detector_svc on 127.0.0.1:" in capsys.readouterr().err
    assert read_jsonl(local) == read_jsonl(served)


def test_explain_local_starts_explain_for_the_run_and_draws_the_same_overlays(
    mesh: dict[str, Any], photos: Path, tmp_path: Path
) -> None:
    common = ["explain", str(photos / "astronaut.png"), "--model", "cnn", "--method", "gradcampp"]
    assert main([*common, "--server", mesh["explain"], "--out", str(tmp_path / "served")]) == 0
    local = [*common, "--local", "--model-dir", str(mesh["store"].root), "--out", str(tmp_path / "local")]
    assert main(local) == 0
    served, here = (
        read_jsonl(tmp_path / "served" / "index.jsonl"),
        read_jsonl(tmp_path / "local" / "index.jsonl"),
    )
    assert here == served
    for record in served.values():
        for png in (record["overlay"], record["heatmap"]):
            assert (tmp_path / "local" / png).read_bytes() == (tmp_path / "served" / png).read_bytes()
