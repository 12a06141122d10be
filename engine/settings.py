"""Settings of a worker, read once at the entry point (env prefix ``SIE_``).

Every component receives the piece of this object it needs; nothing else reads
the environment. Nested groups use ``__`` in variable names, e.g.
``SIE_KAFKA__BOOTSTRAP_SERVERS`` or ``SIE_BATCH__MAX_SIZE``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class KafkaSettings(BaseModel):
    """How to reach the Kafka cluster, and the consumer's group behaviour."""

    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_key_password: SecretStr | None = None
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    group_id: str = "sie-workers"
    session_timeout_s: float = Field(10.0, gt=0)
    heartbeat_interval_s: float = Field(1.0, gt=0)
    # How often acknowledged positions are committed; bounds the records a crash answers twice.
    commit_interval_s: float = Field(0.25, gt=0)
    max_poll_records: int = Field(2000, gt=0)
    linger_ms: int = Field(2, ge=0)
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    # Longest a fetch may wait for data. Kafka answers as soon as data is there, so this only
    # bounds how long an idle consumer's fetch stays open (and how soon it sees a new record).
    fetch_max_wait_ms: int = Field(100, ge=1, le=30_000)
    # "classic": the classic group protocol with cooperative-sticky assignment (incremental
    # rebalances, session timeout set here); "consumer": Kafka 4's protocol (KIP-848), whose
    # session timeout and heartbeats the broker sets (group.consumer.* broker settings).
    group_protocol: Literal["classic", "consumer"] = "classic"
    # Records fetched and not yet taken by the pipeline before the consumer pauses its partitions.
    max_buffered_records: int = Field(20_000, gt=0)
    # Longest a revoke waits for the revoked partitions' records in flight before releasing them.
    revoke_timeout_s: float = Field(30.0, gt=0)
    # An assigned partition whose position has not moved this long while the broker holds records
    # past it is stalled; its fetch is restarted (sie_partition_fetch_restarts_total).
    stall_after_s: float = Field(10.0, gt=0)

    # "at_least_once": positions are committed after the outputs are acknowledged (a fault may
    # answer some events twice); "exactly_once": outputs, dead letters and positions are written in
    # one Kafka transaction per transaction interval (docs/exactly-once.md).
    processing_guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    # exactly_once: how often the transaction is committed (bounds a read_committed reader's latency).
    transaction_interval_s: float = Field(0.1, gt=0)
    # exactly_once: the broker aborts a transaction open this long (a dead worker's: until then a
    # read_committed reader waits at its first output). A worker aborts its own transaction when
    # its pipeline has not emptied within a third of it (Triton down), and processes it again.
    transaction_timeout_s: float = Field(60.0, gt=0)


class TopicSettings(BaseModel):
    """Topic names of the event contract."""

    events: str = "events"
    predictions: str = "predictions"
    dlq: str = "events.dlq"
    partitions: int = Field(4, gt=0)
    # Format of predictions: "auto" answers binary tensor events in binary and JSON events in JSON.
    output_format: Literal["auto", "json", "binary"] = "auto"


class TritonSettings(BaseModel):
    """Where Triton is, and how the worker talks to it."""

    url: str = "127.0.0.1:8001"
    http_url: str = "127.0.0.1:8000"
    default_model: str = "breast_cancer"
    request_timeout_s: float = Field(10.0, gt=0)
    identity: bool = False  # benchmark only: skip inference (inference/passthrough_backend.py)
    ssl: bool = False
    root_certificates: Path | None = None
    private_key: Path | None = None
    certificate_chain: Path | None = None


class BatchSettings(BaseModel):
    """Micro-batching: a batch is sent when it is full or its deadline passes."""

    max_size: int = Field(256, gt=0)
    max_delay_ms: float = Field(5.0, ge=0)
    max_in_flight: int = Field(4, gt=0)
    # Adaptive batching (engine/adaptive.py): the deadline follows the p99 latency against slo_ms,
    # starting at max_delay_ms and moving between 0.5 ms and adaptive_max_delay_ms.
    adaptive: bool = False
    slo_ms: float = Field(25.0, gt=0)
    adaptive_max_delay_ms: float = Field(50.0, gt=0)


class RetrySettings(BaseModel):
    """Retries of retryable inference-backend failures, and the circuit breaker."""

    initial_backoff_s: float = Field(0.05, gt=0)
    max_backoff_s: float = Field(2.0, gt=0)
    multiplier: float = Field(2.0, ge=1)
    # Failures in a row that open the circuit; while open, batches wait
    # (they are never dead-lettered because the backend is down).
    failure_threshold: int = Field(3, gt=0)
    reset_timeout_s: float = Field(1.0, gt=0)


class LimitSettings(BaseModel):
    """Per-event limits (events over them go to the DLQ as ``too_large``) and decoding's memory bound."""

    max_message_bytes: int = Field(1_000_000, gt=0)  # of the record value
    max_elements: int = Field(65_536, gt=0)  # numbers in one input tensor
    max_id_length: int = Field(256, gt=0)  # characters of the event's "id"
    max_key_bytes: int = Field(4_096, gt=0)  # of the record key
    max_headers: int = Field(64, ge=0)  # headers on one record
    max_header_bytes: int = Field(16_384, ge=0)  # header names and values of one record, in all
    # Not a per-event limit: bytes of values whose parsed JSON a consumed chunk holds at once while
    # it is decoded (the rest is decoded after the held part is converted and released).
    max_held_value_bytes: int = Field(1_000_000, gt=0)


class RouteTarget(BaseModel):
    """A served model and optionally a pinned version ("" = the version the backend serves)."""

    model: str
    version: str = ""


class ArmSettings(RouteTarget):
    """One arm of an A/B split: a name (written to the output's ``arm``), a target, a weight."""

    name: str
    weight: float = Field(1.0, gt=0)


class RoutingSettings(BaseModel):
    """Model routing (docs/models.md); complex values are JSON in the environment, e.g.
    ``SIE_ROUTING__EXPERIMENTS='{"breast_cancer": [{"name": "a", "model": "breast_cancer",
    "version": "1"}, {"name": "b", "model": "breast_cancer", "version": "2"}]}'``."""

    topic_models: dict[str, str] = {}  # extra input topic -> its default model
    experiments: dict[str, list[ArmSettings]] = {}  # requested model name -> A/B arms
    shadows: dict[str, list[RouteTarget]] = {}  # served model -> shadow targets (best effort)
    shadow_topic: str = "predictions.shadow"
    shadow_max_in_flight: int = Field(2, gt=0)
    # Alert threshold of shadow agreement (share of rows in the primary's class), per shadow model
    # ("model" or "model:version"); others use shadow_default_min_agreement. See models/agreement.py.
    shadow_min_agreement: dict[str, Annotated[float, Field(ge=0, le=1)]] = {}
    shadow_default_min_agreement: float = Field(0.99, ge=0, le=1)


class DriftSettings(BaseModel):
    """Drift of live inputs/scores against ``<reference_dir>/<model>/reference_profile.json``."""

    reference_dir: Path | None = None  # None: drift monitoring off
    window: int = Field(2000, gt=0)  # events kept per model
    min_samples: int = Field(500, gt=0)  # no gauge before this many
    every: int = Field(250, gt=0)  # recompute after this many new events


class Settings(BaseSettings):
    """All settings of one worker."""

    model_config = SettingsConfigDict(env_prefix="SIE_", env_nested_delimiter="__", extra="ignore")

    kafka: KafkaSettings = KafkaSettings()
    topics: TopicSettings = TopicSettings()
    triton: TritonSettings = TritonSettings()
    batch: BatchSettings = BatchSettings()
    retry: RetrySettings = RetrySettings()
    limits: LimitSettings = LimitSettings()
    routing: RoutingSettings = RoutingSettings()
    drift: DriftSettings = DriftSettings()
    metrics_port: int = Field(9300, ge=0)
    # Address of /metrics, /healthz, /readyz; all interfaces, so probes reach it in a container.
    metrics_host: str = "0.0.0.0"
    worker_name: str = "sie-worker"
    data_dir: Path = Path(".sie")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    otlp_endpoint: str | None = None
    # Share of events without a sampled/unsampled traceparent that get spans (head sampling).
    trace_sample_ratio: float = Field(1.0, ge=0.0, le=1.0)
