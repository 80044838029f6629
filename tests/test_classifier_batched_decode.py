"""classifier_svc decoding JPEGs a batch at a time on the model's device (VISION_CLASSIFIER_DECODE=batched;
the default on CUDA). On this CPU-only machine the same code runs with torchvision's libjpeg-turbo decoder
in place of nvJPEG: answers within the tolerance of the Pillow path, bad images refused per request (a JPEG
whose header passes but whose pixels do not decode fails alone, not its batch), other formats decoded on the
CPU as before."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from pydantic import ValidationError

from classifier_svc.config import ClassifierSettings
from tests.conftest import encode, publish_random_model, start_classifier
from vision.models.store import ModelStore
from vision.v1 import classifier_pb2, classifier_pb2_grpc

CLASSES = [f"class_{i}" for i in range(10)]


def scores(stub: classifier_pb2_grpc.ClassifierStub, image: bytes) -> list[float]:
    reply = stub.Classify(classifier_pb2.ClassifyRequest(image=image, top_k=10), timeout=30)
    return [c.score for c in sorted(reply.classes, key=lambda c: c.class_id)]


def test_batched_decoding_answers_as_pillow_does_and_refuses_bad_images_one_by_one(
    store: ModelStore, bus_jpeg: bytes, zidane_jpeg: bytes, astronaut: object
) -> None:
    publish_random_model(store, classes=CLASSES)
    png = encode(astronaut, "PNG")  # type: ignore[arg-type]
    photos = [bus_jpeg, zidane_jpeg, png]
    answers = {}
    for mode in ("pillow", "batched"):
        server, engine = start_classifier(store, decode=mode, max_batch_delay_ms=50)
        assert engine.batched_decode == (mode == "batched")  # type: ignore[attr-defined]
        loaded = engine.registry.get("", "")[2]  # type: ignore[attr-defined]
        assert (loaded.decoder is not None) == (mode == "batched")  # the path under test is the one served
        try:
            with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                stub = classifier_pb2_grpc.ClassifierStub(channel)
                answers[mode] = np.asarray([scores(stub, p) for p in photos])
                if mode == "batched":
                    # Header fine, scan data cut short: found only when the batch decodes it.
                    truncated = bus_jpeg[: len(bus_jpeg) // 2]
                    with ThreadPoolExecutor(4) as pool:
                        good = [pool.submit(scores, stub, p) for p in (bus_jpeg, zidane_jpeg, png)]
                        bad = pool.submit(scores, stub, truncated)
                        assert all(len(f.result()) == 10 for f in good)
                        with pytest.raises(grpc.RpcError) as refused:
                            bad.result()
                    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                    assert "corrupt or truncated" in (refused.value.details() or "")
                    with pytest.raises(grpc.RpcError) as not_image:
                        scores(stub, b"not an image at all")
                    assert not_image.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        finally:
            server.stop(0).wait()
            engine.close()  # type: ignore[attr-defined]
    assert np.abs(answers["pillow"] - answers["batched"]).max() <= 1e-4
    # The JPEGs were decoded and resized another way (tensor resize: up to one level apart); the PNG not.
    assert not np.array_equal(answers["pillow"][:2], answers["batched"][:2])
    assert np.array_equal(answers["pillow"][2], answers["batched"][2])
    assert (answers["pillow"].argmax(1) == answers["batched"].argmax(1)).all()


@pytest.mark.fast
def test_auto_decodes_batched_on_cuda_only_and_fast_preprocessing_stays_on_pillow() -> None:
    assert ClassifierSettings().batched_decode("cuda") is True
    assert ClassifierSettings().batched_decode("cpu") is False
    assert ClassifierSettings(preprocess="fast").batched_decode("cuda") is False
    assert ClassifierSettings(decode="batched").batched_decode("cpu") is True
    with pytest.raises(ValidationError, match="PREPROCESS=fast is a Pillow mode"):
        ClassifierSettings(decode="batched", preprocess="fast")
