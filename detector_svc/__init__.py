"""detector_svc: object detection with Ultralytics YOLO over gRPC (vision.v1.Detector)."""
