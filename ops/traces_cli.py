"""``sie traces``: read the Collector's file output and draw traces as waterfalls."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from ops.trace_file import find_trace, read_spans, slowest
from ops.trace_view import summary, waterfall


def show_traces(
    console: Console,
    path: Path,
    key: str | None = None,
    *,
    top: int = 3,
    since_min: float = 15.0,
    width: int = 48,
    now_s: float | None = None,
) -> int:
    """Print one trace (``key``: trace or event id) or the ``top`` slowest recent ones; the exit code."""
    spans = read_spans(path)
    if not spans:
        console.print(
            f"no spans in {escape(str(path))}: start the stack with `sie up` (its Collector writes there) "
            "and send events, or name another file with --file"
        )
        return 1
    if key is not None:
        trace = find_trace(key, spans)
        if trace is None:
            console.print(f"no trace with id or event id {escape(key)!r} in {escape(str(path))}")
            return 1
        console.print(waterfall(trace, width))
        return 0
    since_ns = int(((now_s if now_s is not None else time.time()) - since_min * 60) * 1e9)
    traces = slowest(spans, top, since_ns)
    if not traces:
        where = escape(str(path))
        console.print(f"no worker spans in the last {since_min:g} minutes in {where} (try --since)")
        return 1
    console.print(summary(traces))
    for trace in traces:
        console.print()
        console.print(waterfall(trace, width))
    return 0
