"""The naive baseline: a Faust agent sending one Triton request per event and awaiting it.

What a user writes first: stock Faust with its default Kafka driver (aiokafka), none of the
engine's code. Run as ``python -m benchmarks.naive_agent`` with the same ``SIE_*`` settings as a
worker (plaintext brokers only).
"""

from __future__ import annotations

import json
from typing import Any

import faust
import numpy as np
import tritonclient.grpc.aio as grpcclient

from engine.settings import Settings


def build(settings: Settings) -> faust.App:
    """A Faust app with one agent: decode, infer, send, per event."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    kafka = settings.kafka
    app = faust.App(
        kafka.group_id,
        broker=";".join(f"kafka://{h.strip()}" for h in kafka.bootstrap_servers.split(",")),
        topic_disable_leader=True,
        topic_allow_declare=False,
        web_enabled=False,
        value_serializer="raw",
        key_serializer="raw",
        datadir=str(settings.data_dir / "faust"),
        loghandlers=[],
    )
    source = app.topic(settings.topics.events, key_type=bytes, value_type=bytes)
    sink = app.topic(settings.topics.predictions, key_type=bytes, value_type=bytes)
    client: dict[str, Any] = {}

    @app.agent(source)
    async def naive(stream: Any) -> None:
        triton = client.setdefault("c", grpcclient.InferenceServerClient(settings.triton.url))
        async for event in stream.events():
            try:
                doc = json.loads(event.value)
                model = doc.get("model") or settings.triton.default_model
                x = np.asarray([doc["features"]], dtype=np.float32)
                tensor = grpcclient.InferInput("features", list(x.shape), "FP32")
                tensor.set_data_from_numpy(x)
                result = await triton.infer(model, [tensor])
                out = {
                    "id": doc["id"],
                    "model": model,
                    "outputs": {"probabilities": result.as_numpy("probabilities")[0].tolist()},
                }
                await sink.send(key=event.key, value=json.dumps(out).encode())
            except Exception as err:  # noqa: BLE001 - a naive agent: drop to the DLQ topic
                await app.topic(settings.topics.dlq).send(
                    key=event.key, value=event.value, headers={"error": str(err).encode()}
                )

    return app


def main() -> None:
    """Run the naive agent until SIGTERM."""
    settings = Settings()
    faust.Worker(
        build(settings), loglevel="warning", quiet=True, redirect_stdouts=False
    ).execute_from_commandline()


if __name__ == "__main__":
    main()
