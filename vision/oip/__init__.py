"""The Open Inference Protocol (KServe v2): tensors, the backend a service supplies, the gRPC servicer."""
