"""A tiny OTLP/HTTP trace receiver for tests: ``POST /v1/traces``, protobuf or JSON.

The Python exporter (the worker) sends protobuf; tritonserver's C++ exporter
sends OTLP/JSON, whose ids are hex strings (not the base64 of proto3 JSON):
they are turned into base64 first, so both land in the same
``ExportTraceServiceRequest`` message from ``opentelemetry-proto``.
"""

from __future__ import annotations

import base64
import gzip
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

_ID_FIELDS = ("traceId", "spanId", "parentSpanId")


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as received, ids in hex."""

    service: str
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    links: tuple[tuple[str, str], ...]  # (trace id, span id)
    attributes: dict[str, Any]


def _hex_ids_to_base64(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: base64.b64encode(bytes.fromhex(v)).decode()
            if k in _ID_FIELDS and isinstance(v, str)
            else _hex_ids_to_base64(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_hex_ids_to_base64(v) for v in node]
    return node


def parse_request(body: bytes, content_type: str) -> ExportTraceServiceRequest:
    """Decode an OTLP/HTTP traces body (protobuf or JSON)."""
    request = ExportTraceServiceRequest()
    if "json" in content_type:
        doc = _hex_ids_to_base64(json.loads(body))
        json_format.ParseDict(doc, request, ignore_unknown_fields=True)
    else:
        request.ParseFromString(body)
    return request


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def spans_of(request: ExportTraceServiceRequest) -> Iterator[ReceivedSpan]:
    """Every span of a request, flattened."""
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for s in scope_spans.spans:
                yield ReceivedSpan(
                    service=str(resource.get("service.name", "")),
                    name=s.name,
                    kind=s.kind,
                    trace_id=s.trace_id.hex(),
                    span_id=s.span_id.hex(),
                    parent_span_id=s.parent_span_id.hex(),
                    links=tuple((link.trace_id.hex(), link.span_id.hex()) for link in s.links),
                    attributes={a.key: _value(a.value) for a in s.attributes},
                )


class OtlpReceiver:
    """An HTTP server on 127.0.0.1 collecting spans; use as a context manager."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp", daemon=True)

    @property
    def url(self) -> str:
        """The traces URL to give exporters."""
        return f"http://127.0.0.1:{self._server.server_port}/v1/traces"

    def snapshot(self) -> list[ReceivedSpan]:
        """The spans received so far."""
        with self._lock:
            return list(self.spans)

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _add(self, body: bytes, content_type: str) -> None:
        try:
            spans = list(spans_of(parse_request(body, content_type)))
        except Exception as err:  # keep the reason for the test's failure message
            with self._lock:
                self.errors.append(f"{type(err).__name__}: {err}")
            raise
        with self._lock:
            self.requests += 1
            self.spans.extend(spans)

    def _handler(self) -> Callable[..., BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                try:
                    receiver._add(body, self.headers.get("Content-Type") or "")
                except Exception:
                    self.send_error(400)
                    return
                out = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                """Quiet."""

        return Handler
