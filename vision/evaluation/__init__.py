"""Measuring a classifier on labelled images: the metrics (top-1/top-5 accuracy, per-class precision,
recall, F1, the confusion matrix) and the report of `vision evaluate DIR`. One implementation, used by the
trainer for its validation and by `vision evaluate` / `VisionClient.evaluate` for a held-out folder."""
