"""How often Triton continues the W3C ``traceparent`` of a gRPC request: no engine involved.

Starts the project's OpenTelemetry Collector (ops/embedded/otelcol.py) and a
traced tritonserver exporting to it, sends
``--requests`` inferences with a fresh ``traceparent`` each through a bare
tritonclient gRPC aio loop, and counts Triton's ``InferRequest`` spans that
continue the sent context versus those that start a new trace::

    .venv/bin/python -m benchmarks.trace_propagation --requests 1000 --concurrency 4

On tritonserver 2.51 (the nvidia-pytriton wheel) this measured 99 of 1,000
requests losing their parent at concurrency 4 and 4 of 500 serially, which
is why the tracing end-to-end test accounts for such requests instead of
expecting every one to join its batch's trace.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as grpcclient

from ops.embedded import free_port, start_triton
from ops.embedded.otelcol import start_collector
from ops.stack import copy_model_repository
from ops.trace_file import read_spans

MODEL = "breast_cancer"
REPOSITORY = Path(__file__).resolve().parent.parent / "model_repository"


async def _send(url: str, requests: int, concurrency: int) -> dict[str, str]:
    """Send the requests; return span id -> trace id of every traceparent sent."""
    client = grpcclient.InferenceServerClient(url)
    config = (await client.get_model_config(MODEL, as_json=True))["config"]["input"][0]
    dims = [int(d) for d in config["dims"]]
    gate = asyncio.Semaphore(concurrency)
    sent: dict[str, str] = {}

    async def one() -> None:
        async with gate:
            x = np.random.rand(random.randint(1, 40), *dims).astype(np.float32)
            tensor = grpcclient.InferInput(config["name"], list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            trace_id, span_id = f"{random.getrandbits(128):032x}", f"{random.getrandbits(64):016x}"
            sent[span_id] = trace_id
            await client.infer(MODEL, [tensor], headers={"traceparent": f"00-{trace_id}-{span_id}-01"})

    await asyncio.gather(*(one() for _ in range(requests)))
    await client.close()
    return sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        collector = start_collector(work, grpc_port=free_port(), http_port=free_port())
        triton = start_triton(
            copy_model_repository(REPOSITORY, work),
            work,
            http_port=free_port(),
            grpc_port=free_port(),
            metrics_port=free_port(),
            models=[MODEL],
            otlp_endpoint=collector.traces_url,
        )
        try:
            sent = asyncio.run(_send(triton.grpc_url, args.requests, args.concurrency))
            deadline = time.monotonic() + 30
            while True:
                roots = [s for s in read_spans(collector.traces_file) if s.name == "InferRequest"]
                if len(roots) >= args.requests or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
        finally:
            triton.stop()
            collector.stop()
    joined = sum(1 for s in roots if sent.get(s.parent_span_id) == s.trace_id)
    lost = sum(1 for s in roots if not s.parent_span_id)
    print(
        f"{args.requests} requests (concurrency {args.concurrency}): {len(roots)} InferRequest spans, "
        f"{joined} continued the sent traceparent, {lost} started a new trace, "
        f"{len(roots) - joined - lost} other"
    )


if __name__ == "__main__":
    main()
