"""trainer_svc: training jobs over gRPC (vision.v1.Trainer)."""
