"""Load generation and measurement: a paced producer and a prediction monitor.

Used by ``sie up --demo-rate`` (live view) and the benchmarks. Latency is end to
end as a user sees it: from the moment the producer hands an event to Kafka to
the moment its prediction (or dead letter) is read back from the output topic.
Both ends run in this process, so one clock measures both.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from engine.contract.wire import binary_header_length
from ops.eventgen import GeneratedEvent
from streams.producer import Headers, new_producer, produce_waiting


class SendLog:
    """Send times of events in flight, by id (thread-safe, bounded by age)."""

    def __init__(self, max_age_s: float = 120.0) -> None:
        self._times: dict[str, float] = {}
        self._lock = threading.Lock()
        self._max_age = max_age_s
        self.sent = 0

    def record(self, event_id: str, at: float) -> None:
        """Remember that ``event_id`` was sent at ``at`` (time.monotonic)."""
        with self._lock:
            self._times[event_id] = at
            self.sent += 1
            if len(self._times) > 200_000:
                self._evict(at)

    def pop(self, event_id: str) -> float | None:
        """The send time of ``event_id`` (forgotten afterwards), or None."""
        with self._lock:
            return self._times.pop(event_id, None)

    def _evict(self, now: float) -> None:
        old = [k for k, t in self._times.items() if now - t > self._max_age]
        for k in old:
            del self._times[k]


class PacedProducer(threading.Thread):
    """Produces events at ``rate`` per second (in 5 ms ticks) until stopped or exhausted."""

    def __init__(
        self,
        config: Mapping[str, str],
        topic: str,
        events: Iterator[GeneratedEvent],
        rate: float,
        log: SendLog,
        extra_malformed_every: int = 0,
    ) -> None:
        super().__init__(name="paced-producer", daemon=True)
        # Events go out in 5 ms ticks, so each tick's burst is one request per partition even with
        # a 1 ms linger; a longer linger would only add to every event's measured latency.
        self._producer = new_producer(
            config, overrides={"linger.ms": "1", "queue.buffering.max.messages": "1000000"}
        )
        self._topic, self._events, self.rate, self._log = topic, events, rate, log
        self._malformed_every = extra_malformed_every
        self._stop_flag = threading.Event()
        self.produced = 0
        self.errors = 0

    def stop(self) -> None:
        """Stop after the current tick and flush."""
        self._stop_flag.set()

    def _on_delivery(self, err: object, _msg: object) -> None:
        if err is not None:
            self.errors += 1

    def run(self) -> None:
        """Pace production: at tick k, ``k * tick * rate`` events should have been sent."""
        start = time.monotonic()
        tick = 0.005
        while not self._stop_flag.is_set():
            due = int((time.monotonic() - start) * self.rate) - self.produced
            for _ in range(max(due, 0)):
                if not self._send_one():
                    self._stop_flag.set()
                    break
            self._producer.poll(0)
            time.sleep(tick)
        self._producer.flush(30)

    def _send_one(self) -> bool:
        event = next(self._events, None)
        if event is None:
            return False
        value = event.value
        if self._malformed_every and self.produced % self._malformed_every == self._malformed_every - 1:
            value = value[: len(value) // 2]  # truncated JSON or tensor bytes -> dead letter
        headers: Headers = list(event.headers) or None  # a binary event's content type, header length
        produce_waiting(
            self._producer, self._topic, value, event.key, headers, self._on_delivery, poll_s=0.01
        )
        self._log.record(event.id, time.monotonic())
        self.produced += 1
        return True


@dataclass(frozen=True)
class Snapshot:
    """Figures over the last window."""

    produced: int
    predictions: int
    dead_letters: int
    predictions_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float


def prediction_id(value: bytes | None, headers: list[tuple[str, bytes]] | None) -> str | None:
    """The ``id`` of a prediction, JSON or binary (its JSON header); None when it has none."""
    try:
        length = binary_header_length(headers or ())
        doc = orjson.loads((value or b"{}")[:length] if length else value or b"{}")
        event_id = doc.get("id")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return event_id if isinstance(event_id, str) else None


class PredictionMonitor(threading.Thread):
    """Reads predictions and dead letters, matches them to send times, keeps rolling figures."""

    def __init__(
        self,
        config: Mapping[str, str],
        predictions_topic: str,
        dlq_topic: str,
        log: SendLog,
        window_s: float = 5.0,
        max_samples: int = 400_000,
        from_beginning: bool = True,
    ) -> None:
        super().__init__(name="prediction-monitor", daemon=True)
        self._config = dict(config)
        self._topics = (predictions_topic, dlq_topic)
        self._log = log
        self._window = window_s
        self._from_beginning = from_beginning  # False: only outputs written from now on
        self._stop_flag = threading.Event()
        self._lock = threading.Lock()
        self._recent: deque[tuple[float, float]] = deque()  # (arrival, latency s)
        # (arrival, latency s) of matched outputs and arrival times of all outputs; bounded so a
        # long demo does not grow without limit (a benchmark level fits well inside).
        self.samples: deque[tuple[float, float]] = deque(maxlen=max_samples)
        self.arrivals: deque[float] = deque(maxlen=max_samples)
        self.predictions = 0
        self.dead_letters = 0
        self.unmatched = 0

    def stop(self) -> None:
        """Stop reading."""
        self._stop_flag.set()

    def run(self) -> None:
        """Assign every partition (no group join) from the beginning or the end, read until stopped."""
        consumer = Consumer(
            {**self._config, "group.id": f"sie-monitor-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False}
        )
        metadata = consumer.list_topics(timeout=10)
        partitions = [TopicPartition(t, p) for t in self._topics for p in metadata.topics[t].partitions]
        for tp in partitions:  # the end as it is now, not whenever the first fetch happens
            tp.offset = (
                OFFSET_BEGINNING
                if self._from_beginning
                else consumer.get_watermark_offsets(tp, timeout=10)[1]
            )
        consumer.assign(partitions)
        try:
            while not self._stop_flag.is_set():
                # poll() returns as soon as one record is there; consume(n, 0) takes the rest
                # without waiting (consume(n, timeout) would wait for n records or the timeout).
                first = consumer.poll(0.1)
                if first is None:
                    continue
                now = time.monotonic()
                for msg in [first, *consumer.consume(1000, 0)]:
                    if not msg.error():
                        self._on_message(msg.topic() or "", msg.value(), now, msg.headers())  # type: ignore[arg-type]  # a list of (str, bytes) from a consumer
        finally:
            consumer.close()

    @property
    def latencies(self) -> list[float]:
        """Every matched latency, seconds, in arrival order."""
        with self._lock:
            return [lat for _, lat in self.samples]

    def window(self, start: float, end: float) -> tuple[int, np.ndarray]:
        """Outputs that arrived in ``[start, end)`` and their latencies (seconds)."""
        with self._lock:
            arrived = sum(1 for t in self.arrivals if start <= t < end)
            lat = np.array([lat for t, lat in self.samples if start <= t < end])
        return arrived, lat

    def arrival_times(self, start: float, end: float) -> np.ndarray:
        """Arrival times (monotonic seconds) of the outputs that arrived in ``[start, end)``, sorted."""
        with self._lock:
            return np.sort(np.array([t for t in self.arrivals if start <= t < end]))

    def _on_message(
        self, topic: str, value: bytes | None, now: float, headers: list[tuple[str, bytes]] | None = None
    ) -> None:
        with self._lock:
            self.arrivals.append(now)
        if topic == self._topics[0]:
            self.predictions += 1
            event_id = prediction_id(value, headers)
            sent = self._log.pop(event_id) if isinstance(event_id, str) else None
            if sent is None:
                self.unmatched += 1
                return
            latency = now - sent
            with self._lock:
                self._recent.append((now, latency))
                self.samples.append((now, latency))
        else:
            self.dead_letters += 1

    def snapshot(self) -> Snapshot:
        """Rates and percentiles over the last ``window_s`` seconds."""
        now = time.monotonic()
        with self._lock:
            while self._recent and now - self._recent[0][0] > self._window:
                self._recent.popleft()
            lat = np.array([x[1] for x in self._recent]) * 1000.0
        p50, p95, p99 = np.percentile(lat, [50, 95, 99]) if lat.size else (np.nan,) * 3
        return Snapshot(
            produced=self._log.sent,
            predictions=self.predictions,
            dead_letters=self.dead_letters,
            predictions_per_s=lat.size / self._window,
            p50_ms=float(p50),
            p95_ms=float(p95),
            p99_ms=float(p99),
        )
