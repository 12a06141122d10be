"""The core: records, settings, the event contract, routing, batching, retries, the pipeline and its
ports (engine/ports.py). Imports no Kafka, Faust, inference-server, HTTP, process or socket
library (docs/architecture.md)."""
