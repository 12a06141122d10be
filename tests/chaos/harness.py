"""Tools of the chaos tests: a steady producer, the final accounting, probes and reports.

Every chaos test sends events with unique ids at a steady rate from a
background thread, breaks something, then reads the predictions and DLQ
topics back and accounts for every id (:func:`account`). Figures go to
``reports/chaos/<test>.json`` (:func:`write_report`) so they can be quoted.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

from ops.eventgen import generate, load_profiles
from tests.integration.conftest import MODEL_REPOSITORY
from tests.integration.kafka import Msg, collect

REPORT_DIR = Path(__file__).resolve().parents[2] / "reports" / "chaos"
EVENTS = 50_000
RATE = 1_500  # events/s: modest, the machine is two shared cores
CAUGHT_UP_LATENCY_S = 2.0  # a prediction this soon after its event means "no backlog"


class SteadyProducer(threading.Thread):
    """Produces ``count`` events with unique ids at ``rate`` per second, in a thread.

    ``sent_at[id]`` is the wall-clock time each event was handed to the producer.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        count: int = EVENTS,
        rate: float = RATE,
        prefix: str = "chaos",
        models: list[str] | None = None,
        client_config: dict[str, str] | None = None,
    ) -> None:
        super().__init__(name="steady-producer", daemon=True)
        profiles = load_profiles(MODEL_REPOSITORY, models)
        self.events = list(generate(profiles, count, seed=11, keys=64, prefix=prefix))
        self.ids = [e.id for e in self.events]
        self.models = {e.id: e.model for e in self.events}
        self.topic = topic
        self.rate = rate
        self.sent_at: dict[str, float] = {}
        self.errors: list[str] = []
        self.finished = threading.Event()
        conf = {"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": False, "acks": "all"}
        self._producer = Producer(conf | (client_config or {}))

    @property
    def sent(self) -> int:
        """Events handed to the producer so far."""
        return len(self.sent_at)

    def run(self) -> None:
        start = time.monotonic()
        i = 0
        total = len(self.events)
        while i < total:
            due = min(total, int((time.monotonic() - start) * self.rate) + 1)
            while i < due:
                ev = self.events[i]
                try:
                    self._producer.produce(
                        self.topic, value=ev.value, key=ev.key, on_delivery=self._on_delivery
                    )
                except BufferError:
                    self._producer.poll(0.05)
                    continue
                self.sent_at[ev.id] = time.time()
                i += 1
            self._producer.poll(0)
            time.sleep(0.01)
        remaining = self._producer.flush(120)
        if remaining:
            self.errors.append(f"{remaining} records unflushed")
        self.finished.set()

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self.errors.append(str(err))

    def wait_sent(self, fraction: float, timeout: float = 120.0) -> None:
        """Block until ``fraction`` of the events have been sent."""
        deadline = time.monotonic() + timeout
        target = int(fraction * len(self.events))
        while self.sent < target:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {self.sent}/{target} events sent after {timeout}s")
            time.sleep(0.05)

    def finish(self, timeout: float = 180.0) -> None:
        """Wait until every event is sent and acknowledged by the broker."""
        assert self.finished.wait(timeout), "producer did not finish"
        assert not self.errors, self.errors[:3]


@dataclass
class Accounting:
    """What became of every sent id."""

    events: int
    predicted: int
    dead_lettered: int
    lost: int
    duplicates: int
    dlq_reasons: dict[str, int]
    missing_sample: list[str]
    output_at: dict[str, float] = field(repr=False)  # id -> time of its first output
    per_partition_times: dict[int, list[float]] = field(repr=False)
    duplicate_ids: list[str] = field(default_factory=list, repr=False)  # ids answered more than once
    # A few ids answered twice, each with where its copies are: "topic[partition]@offset (ms)".
    duplicate_sample: dict[str, list[str]] = field(default_factory=dict)
    # When ids are missing: each output partition's (last stable offset, high watermark) then.
    watermarks: dict[str, list[int]] = field(default_factory=dict)

    def figures(self) -> dict[str, Any]:
        """The JSON-able summary."""
        d = asdict(self)
        del d["output_at"], d["per_partition_times"], d["duplicate_ids"]
        return d


def _output_id(msg: Msg) -> str | None:
    try:
        doc = orjson.loads(msg.value or b"")
    except orjson.JSONDecodeError:
        return None
    value = doc.get("id") if isinstance(doc, dict) else None
    return value if isinstance(value, str) else None


def account(
    bootstrap: str,
    predictions_topic: str,
    dlq_topic: str,
    ids: Sequence[str],
    timeout: float = 240.0,
    settle: float = 3.0,
    isolation: str = "read_committed",
) -> Accounting:
    """Read both output topics until every id is seen (or ``timeout``) and count, as a consumer
    with ``isolation`` (Kafka's ``isolation.level``) sees them."""
    wanted = set(ids)
    seen: set[str] = set()
    cursor = {predictions_topic: 0, dlq_topic: 0}

    def done(got: dict[str, list[Msg]]) -> bool:
        for topic, msgs in got.items():
            for msg in msgs[cursor[topic] :]:
                event_id = _output_id(msg)
                if event_id is not None:
                    seen.add(event_id)
            cursor[topic] = len(msgs)
        return wanted <= seen

    config = {"isolation.level": isolation}
    out = collect(bootstrap, [predictions_topic, dlq_topic], done, timeout, settle, client_config=config)
    counts: Counter[str] = Counter()
    first: dict[str, float] = {}
    per_partition: dict[int, list[float]] = defaultdict(list)
    reasons: Counter[str] = Counter()
    for topic in (predictions_topic, dlq_topic):
        for msg in out[topic]:
            event_id = _output_id(msg)
            if event_id is None or event_id not in wanted:
                continue
            counts[event_id] += 1
            t = msg.timestamp_ms / 1000.0
            first[event_id] = min(first.get(event_id, t), t)
            per_partition[msg.partition].append(t)
            if topic == dlq_topic:
                reasons[msg.headers.get("error.reason", b"?").decode()] += 1
    dead_ids = {_output_id(m) for m in out[dlq_topic]}
    twice = sorted(i for i, n in counts.items() if n > 1)
    sample: dict[str, list[str]] = {i: [] for i in twice[:5]}
    for topic in (predictions_topic, dlq_topic):
        for msg in out[topic]:
            event_id = _output_id(msg)
            if event_id in sample:
                sample[event_id].append(f"{msg.topic}[{msg.partition}]@{msg.offset} ({msg.timestamp_ms})")
    missing = sorted(wanted - counts.keys())
    marks = _watermarks(bootstrap, [predictions_topic, dlq_topic]) if missing else {}
    return Accounting(
        events=len(wanted),
        predicted=len(counts.keys() - dead_ids),
        dead_lettered=len(dead_ids & wanted),
        lost=len(missing),
        duplicates=sum(counts.values()) - len(counts),
        dlq_reasons=dict(reasons),
        missing_sample=missing[:5],
        output_at=first,
        per_partition_times={p: sorted(ts) for p, ts in per_partition.items()},
        duplicate_ids=twice,
        duplicate_sample=sample,
        watermarks=marks,
    )


def _watermarks(bootstrap: str, topics: Sequence[str]) -> dict[str, list[int]]:
    """``topic[partition]`` -> [last stable offset, high watermark] (what a read_committed and a
    read_uncommitted consumer may read up to)."""
    marks: dict[str, list[int]] = {}
    readers = {
        iso: Consumer({"bootstrap.servers": bootstrap, "group.id": "chaos-marks", "isolation.level": iso})
        for iso in ("read_committed", "read_uncommitted")
    }
    try:
        meta = readers["read_committed"].list_topics(timeout=10)
        for topic in topics:
            for p in sorted(meta.topics[topic].partitions):
                tp = TopicPartition(topic, p)
                marks[f"{topic}[{p}]"] = [
                    readers[i].get_watermark_offsets(tp, timeout=10)[1] for i in readers
                ]
    except Exception as err:  # noqa: BLE001 - a diagnostic only
        marks["error"] = [str(err)]  # type: ignore[list-item]
    finally:
        for reader in readers.values():
            reader.close()
    return marks


_ASSIGNED = re.compile(r"^(\S+ \S+) INFO streams\.group_consumer: assigned (.*)$", re.M)
_REVOKED = re.compile(r"^(\S+ \S+) INFO streams\.group_consumer: revoked .* \(committed (.*)\)$", re.M)
_POSITION = re.compile(r"(\S+)\[(\d+)\]@(\d+)")


def positions_read_again(logs: Sequence[str]) -> list[str]:
    """Assignments that started a partition below a position the group had reached before.

    From the workers' logs (``assigned t[p]@offset`` and ``revoked ... (committed t[p]@offset)``
    lines, in time order across workers): each assignment must start at or above every position
    of the partition assigned or committed before it. A partition read again from below its last
    committed position (the broker-freeze bug: reset to offset 0) shows up here.
    """
    events: list[tuple[str, str, str, int]] = []  # (time, kind, partition, offset)
    for text in logs:
        for kind, pattern in (("assigned", _ASSIGNED), ("committed", _REVOKED)):
            for when, rest in pattern.findall(text):
                events += [(when, kind, f"{t}[{p}]", int(o)) for t, p, o in _POSITION.findall(rest)]
    reached: dict[str, int] = {}
    bad = []
    for when, kind, tp, offset in sorted(events):
        if kind == "assigned" and offset < reached.get(tp, 0):
            bad.append(f"{when}: {tp} assigned at {offset}, below {reached[tp]} reached before")
        reached[tp] = max(reached.get(tp, 0), offset)
    return bad


def longest_stall(acc: Accounting, after: float, before: float | None = None) -> float:
    """Longest time (s) any output partition went without a record, within [after, before]."""
    worst = 0.0
    for times in acc.per_partition_times.values():
        window = [t for t in times if t >= after and (before is None or t <= before)]
        worst = max([worst] + [b - a for a, b in zip(window, window[1:], strict=False)])
    return round(worst, 3)


def caught_up_at(
    acc: Accounting, sent_at: dict[str, float], since: float, until: float | None = None
) -> float | None:
    """Seconds after ``since`` from which outputs came within CAUGHT_UP_LATENCY_S of their event.

    Only outputs written before ``until`` count; None if the backlog lasted until then.
    """
    late = [
        out
        for event_id, out in acc.output_at.items()
        if out - sent_at[event_id] > CAUGHT_UP_LATENCY_S and (until is None or out < until)
    ]
    last_late = max(late, default=since)
    if until is not None and last_late > until - 2 * CAUGHT_UP_LATENCY_S:
        return None
    return round(max(last_late - since, 0.0), 3)


def first_output_after(acc: Accounting, since: float) -> float | None:
    """Seconds from ``since`` to the first output record written after it."""
    after = [t for times in acc.per_partition_times.values() for t in times if t > since]
    return round(min(after) - since, 3) if after else None


def write_report(name: str, figures: dict[str, Any]) -> Path:
    """Print ``figures``, write them to ``reports/chaos/<name>.json`` and append them to
    ``reports/chaos/history.jsonl`` (one line per run: the spread over ``--repeat`` runs)."""
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    path = REPORT_DIR / f"{name}.json"
    figures = {"test": name, "written_at": time.strftime("%Y-%m-%dT%H:%M:%S")} | figures
    path.write_text(json.dumps(figures, indent=2, sort_keys=False) + "\n")
    with (REPORT_DIR / "history.jsonl").open("a") as history:
        history.write(json.dumps(figures) + "\n")
    print(f"\nchaos report {name}: {json.dumps(figures)}")
    return path


def rss_kib(pid: int) -> int | None:
    """VmRSS of a process in KiB (None once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def scrape(metrics_url: str) -> dict[str, float]:
    """Unlabelled-sum view of a Prometheus endpoint: metric name -> summed value."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=2.0) as response:
            text = response.read().decode()
    except OSError:
        return {}
    values: dict[str, float] = defaultdict(float)
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_part, _, value = line.rpartition(" ")
        name = name_part.split("{", 1)[0]
        try:
            values[name] += float(value)
        except ValueError:
            continue
    return dict(values)


class Sampler(threading.Thread):
    """Calls ``probe()`` every ``interval`` seconds and keeps (time, value) pairs."""

    def __init__(self, probe: Callable[[], Any], interval: float = 0.25) -> None:
        super().__init__(name="sampler", daemon=True)
        self._probe = probe
        self._interval = interval
        self._halt = threading.Event()
        self.samples: list[tuple[float, Any]] = []

    def run(self) -> None:
        while not self._halt.is_set():
            value = self._probe()
            if value is not None:
                self.samples.append((time.time(), value))
            self._halt.wait(self._interval)

    def stop(self) -> list[tuple[float, Any]]:
        """Stop sampling; return the samples."""
        self._halt.set()
        self.join(5)
        return self.samples

    def between(self, start: float, end: float) -> list[Any]:
        """Values sampled within [start, end]."""
        return [v for t, v in self.samples if start <= t <= end]
