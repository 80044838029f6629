"""The gRPC side of every service: server bootstrap, domain error -> status mapping, timing, the model
catalog."""
