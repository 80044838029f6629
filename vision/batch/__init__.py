"""Batch inference over files, folders and globs: `vision classify`, `vision detect`, `vision explain`.

One runner for the three (`runner.run`): the inputs expanded and sorted (`inputs`), several calls in flight,
one result line per image written and flushed as it comes (`results`: JSONL or CSV), a rerun with the same
output skipping what is done, Ctrl-C stopping cleanly, a progress line with images/s (`progress`). What
each command asks and writes is a `Task` (`tasks`). The same functions serve Python callers:

    from vision.batch import classify_paths
    from vision.client import VisionClient

    with VisionClient(classifier="127.0.0.1:50051") as client:
        summary = classify_paths(client, ["photos/"], Path("results.jsonl"), top_k=3)
"""

from vision.batch.runner import Summary, run
from vision.batch.tasks import classify_paths, detect_paths, explain_paths

__all__ = ["Summary", "classify_paths", "detect_paths", "explain_paths", "run"]
