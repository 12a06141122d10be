"""Faust's producer interface on confluent-kafka, for the ``rdkafka://`` transport (streams/driver.py).

The engine's outputs go through its own sink (streams/sink.py); this serves what Faust itself
sends (``app.send``, ``topic.send``), so that no other Kafka client is built in a worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from typing import Any, cast

from faust.transport import producer as faust_producer
from faust.types import TP
from faust.types.tuples import RecordMetadata

from streams.kafka_config import client_config
from streams.producer import new_producer, produce_waiting_async


class EngineProducer(faust_producer.Producer):
    """Faust's producer interface on a confluent-kafka producer (built on first use).

    The engine's outputs go through its own sink (streams/sink.py); this serves what Faust itself
    sends (``app.send``, ``topic.send``), so that no other Kafka client is built in a worker.
    """

    _producer: Any = None

    def _client(self) -> Any:
        if self._producer is None:
            app = cast(Any, self.app)  # streams.driver.EngineApp: its kafka settings
            self._producer = new_producer(client_config(app.kafka), tuning={"linger.ms": "5"})
        return self._producer

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: Any,
        *,
        transactional_id: str | None = None,
    ) -> Awaitable[RecordMetadata]:
        """Hand the record to librdkafka; the future resolves when the broker acknowledged it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[RecordMetadata] = loop.create_future()

        def delivered(err: Any, msg: Any) -> None:
            if future.done():
                return
            if err is not None:
                loop.call_soon_threadsafe(future.set_exception, RuntimeError(str(err)))
            else:
                meta = RecordMetadata(
                    msg.topic(), msg.partition(), TP(msg.topic(), msg.partition()), msg.offset()
                )
                loop.call_soon_threadsafe(future.set_result, meta)

        producer = self._client()
        hdrs = list(headers.items()) if isinstance(headers, Mapping) else headers
        await produce_waiting_async(producer, topic, value, key, hdrs, delivered)
        producer.poll(0)
        return future

    async def send_and_wait(
        self, topic: str, key: bytes | None, value: bytes | None, *args: Any, **kw: Any
    ) -> Any:
        """:meth:`send`, then wait for the acknowledgement."""
        future = await self.send(topic, key, value, *args, **kw)
        while not future.done():  # type: ignore[attr-defined]
            self._client().poll(0)
            await asyncio.sleep(0.005)
        return await future

    async def flush(self) -> None:
        """Wait until every record sent is acknowledged."""
        if self._producer is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._producer.flush)

    def supports_headers(self) -> bool:
        """Headers are supported."""
        return True
