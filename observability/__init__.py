"""Prometheus metrics, OpenTelemetry tracing and the worker's HTTP endpoint."""
