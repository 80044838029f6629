"""Shared core of the vision services. Imports point inward: services and the gateway import this package,
never the other way round (enforced by import-linter contracts in pyproject.toml).

- ``vision.image``: decoding untrusted images with limits, preprocessing, PNG encoding.
- ``vision.models``: architectures, the model store, weights, checkpoint import, pretrained downloads.
- ``vision.serving``: the model registry, dynamic batching, the serving engine.
- ``vision.rpc``: gRPC server bootstrap, error -> status mapping, timing, the ModelCatalog service.
- ``vision.v1``: generated contracts. Top level: errors, choices, settings, logging, the ``vision`` CLI.
"""
