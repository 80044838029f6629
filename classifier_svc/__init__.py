"""classifier_svc: image classification over gRPC (vision.v1.Classifier)."""
