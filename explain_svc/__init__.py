"""explain_svc: class activation maps (CAM, Grad-CAM, Grad-CAM++) over gRPC (vision.v1.Explainer)."""
