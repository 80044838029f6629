"""Benchmarks: each service against the bare model it wraps, on one machine, in one run.

Run from the repository root as modules::

    python -m benchmarks.classifier     # classifier_svc and the gateway vs the bare model
    python -m benchmarks.explain        # explain_svc vs classifier_svc
    python -m benchmarks.detector       # detector_svc vs bare YOLO.predict
    python -m benchmarks.trainer        # trainer_svc vs a bare PyTorch training loop

They share `benchmarks.harness`: the load generator (`load`), the service launcher (`procs`), CPU
accounting (`cpu`), the test inputs (`inputs`) and the markdown/JSON report (`report`).
"""
