"""The OpenTelemetry SDK and OTLP/HTTP exporter, set up once at the worker's entry point.

Library code only uses ``opentelemetry-api``; this module is the one place that
imports the SDK. Without ``settings.otlp_endpoint`` nothing is set up and the
worker runs with tracing off. The sampler is the SDK's default (parent-based,
always on), which standard ``OTEL_TRACES_SAMPLER`` variables can change.
"""

from __future__ import annotations

import logging

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from engine.redact import redact_url
from engine.settings import Settings
from observability.tracing import otlp_traces_url

log = logging.getLogger(__name__)

SERVICE_NAME = "sie-worker"
# One span per event: a deep queue and frequent, large exports keep up with
# thousands of events per second; spans beyond the queue are dropped, never waited for.
MAX_QUEUE_SIZE = 65_536
MAX_EXPORT_BATCH_SIZE = 4_096
SCHEDULE_DELAY_MS = 1_000


def configure_tracing(settings: Settings) -> TracerProvider | None:
    """Install a tracer provider exporting to ``settings.otlp_endpoint``; None when unset."""
    if not settings.otlp_endpoint:
        return None
    url = otlp_traces_url(settings.otlp_endpoint)
    resource = Resource.create({"service.name": SERVICE_NAME, "service.instance.id": settings.worker_name})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(
        BatchSpanProcessor(
            OTLPSpanExporter(endpoint=url, timeout=10),
            max_queue_size=MAX_QUEUE_SIZE,
            max_export_batch_size=MAX_EXPORT_BATCH_SIZE,
            schedule_delay_millis=SCHEDULE_DELAY_MS,
        )
    )
    trace.set_tracer_provider(provider)
    log.info("exporting traces to %s", redact_url(url))  # never a password in the URL
    return provider
