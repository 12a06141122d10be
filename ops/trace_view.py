"""A trace as a waterfall in the terminal: one row per span, a bar on a shared time axis.

Rows follow the span tree (children under their parent, by start time); a
``triton infer`` span brought in through a link (it carried this event but
belongs to the batch's first event's trace) hangs under the span it links to,
marked ``(linked)``. Batch spans show their model and batch size.
"""

from __future__ import annotations

import time
from collections import defaultdict

from rich.table import Table
from rich.text import Text

from observability.tracing import BATCH_SIZE, EVENT_ID, MODEL
from ops.trace_file import Span, Trace

BAR_WIDTH = 48
_OFFSET, _PARTITION = "messaging.kafka.message.offset", "messaging.kafka.destination.partition"
_STYLES = {"sie-worker": "cyan", "triton": "magenta"}
_DEFAULT_STYLE = "green"


def span_rows(trace: Trace) -> list[tuple[int, Span]]:
    """(depth, span) in display order: depth-first, siblings by start time."""
    ids = {s.span_id for s in trace.spans}
    children: dict[str, list[Span]] = defaultdict(list)
    roots: list[Span] = []
    for span in trace.spans:
        parent = span.parent_span_id
        if span.span_id in trace.linked and parent not in ids:
            parent = next((sid for _, sid in span.links if sid in ids), parent)
        if parent in ids:
            children[parent].append(span)
        else:
            roots.append(span)
    rows: list[tuple[int, Span]] = []
    todo = [(0, s) for s in sorted(roots, key=lambda s: s.start_ns, reverse=True)]
    while todo:
        depth, span = todo.pop()
        rows.append((depth, span))
        kids = sorted(children.get(span.span_id, []), key=lambda s: s.start_ns, reverse=True)
        todo.extend((depth + 1, k) for k in kids)
    return rows


def bar(span: Span, start_ns: int, total_ns: int, width: int = BAR_WIDTH) -> str:
    """The span's bar: spaces up to its start, then at least one block for its length."""
    total = max(total_ns, 1)
    left = min(width - 1, int((span.start_ns - start_ns) * width / total))
    right = min(width, round((span.end_ns - start_ns) * width / total))
    return " " * left + "█" * max(1, right - left)


def label(span: Span) -> str:
    """What a row says about its span besides the name: model, batch size, event id, offset."""
    a = span.attributes
    parts = []
    if MODEL in a:
        parts.append(f"model {a[MODEL]}")
    if BATCH_SIZE in a:
        parts.append(f"batch {a[BATCH_SIZE]}")
    if EVENT_ID in a:
        parts.append(f"event {a[EVENT_ID]}")
    if _OFFSET in a:
        parts.append(f"partition {a.get(_PARTITION, '?')} offset {a[_OFFSET]}")
    if "sie.dead_letter.reason" in a:
        parts.append(f"dead letter: {a['sie.dead_letter.reason']}")
    return ", ".join(parts)


def waterfall(trace: Trace, width: int = BAR_WIDTH) -> Table:
    """The trace as a table: span (indented), service, start and duration in ms, bar, details."""
    start, total = trace.start_ns, trace.end_ns - trace.start_ns
    when = time.strftime("%H:%M:%S", time.localtime(start / 1e9))
    table = Table(
        title=f"trace {trace.trace_id}  {trace.duration_ms:.1f} ms  (started {when})",
        title_justify="left",
        show_edge=False,
    )
    table.add_column("span")
    table.add_column("service")
    table.add_column("at ms", justify="right")
    table.add_column("ms", justify="right")
    table.add_column(axis(total, width), no_wrap=True)
    table.add_column("details")
    for depth, span in span_rows(trace):
        name = "  " * depth + span.name + (" (linked)" if span.span_id in trace.linked else "")
        style = "red" if span.error else _STYLES.get(span.service, _DEFAULT_STYLE)
        table.add_row(
            name,
            span.service,
            f"{(span.start_ns - start) / 1e6:.1f}",
            f"{span.duration_ms:.1f}",
            Text(bar(span, start, total, width), style=style),
            label(span),
        )
    return table


def axis(total_ns: int, width: int = BAR_WIDTH) -> str:
    """The time axis header: ``0`` at the left, the total in ms at the right."""
    right = f"{total_ns / 1e6:.1f} ms"
    return "0" + right.rjust(width - 1)


def summary(traces: list[Trace]) -> Table:
    """One line per trace: its id, duration, span count, and the models and batch sizes it met."""
    table = Table(title="slowest traces", title_justify="left", show_edge=False)
    for column in ("trace id", "ms", "spans", "models (batch size)", "event"):
        table.add_column(column, justify="right" if column in ("ms", "spans") else "left")
    for t in traces:
        batches = [s for s in t.spans if BATCH_SIZE in s.attributes]
        models = ", ".join(f"{s.attributes.get(MODEL, '?')} ({s.attributes[BATCH_SIZE]})" for s in batches)
        event = next((str(s.attributes[EVENT_ID]) for s in t.spans if EVENT_ID in s.attributes), "")
        table.add_row(t.trace_id, f"{t.duration_ms:.1f}", str(len(t.spans)), models, event)
    return table
