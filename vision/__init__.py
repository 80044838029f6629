"""Shared core of the vision services: contracts (``vision.v1``), image decoding and limits, model
architectures and the model store, gRPC server bootstrap, dynamic batching, settings and logging."""
