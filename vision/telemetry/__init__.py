"""Metrics, traces and log context for every process (Prometheus, OpenTelemetry), below everything else in
`vision`: it imports nothing of the project."""
