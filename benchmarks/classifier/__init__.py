"""classifier_svc and the gateway against the bare model (``python -m benchmarks.classifier``)."""
