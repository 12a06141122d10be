"""The raw client bound: confluent-kafka consume in batches, produce one output per event.

No Faust, no decoding, no inference: the physical limit of broker plus client
here. Run as ``python -m benchmarks.raw_client`` with ``SIE_*`` settings.
"""

from __future__ import annotations

import signal
from types import FrameType

from confluent_kafka import Consumer, Producer

from engine.settings import Settings
from streams.kafka_config import client_config, consumer_config

_running = True


def _stop(_signum: int, _frame: FrameType | None) -> None:
    global _running
    _running = False


def main() -> None:
    """Copy every input value to the output topic until SIGTERM."""
    settings = Settings()
    config = client_config(settings.kafka)
    consumer = Consumer(
        {
            **consumer_config(settings.kafka),
            "group.id": settings.kafka.group_id,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": int(settings.kafka.session_timeout_s * 1000),
        }
    )
    producer = Producer({**config, "linger.ms": str(settings.kafka.linger_ms)})
    consumer.subscribe([settings.topics.events])
    out = settings.topics.predictions
    signal.signal(signal.SIGTERM, _stop)
    while _running:
        first = consumer.poll(0.1)
        if first is None:
            continue
        for msg in [first, *consumer.consume(1000, 0)]:
            if msg.error():
                continue
            while True:
                try:
                    producer.produce(out, value=msg.value(), key=msg.key())
                    break
                except BufferError:
                    producer.poll(0.01)
        producer.poll(0)
    producer.flush(10)
    consumer.close()


if __name__ == "__main__":
    main()
