"""Start the real servers - Apache Kafka and tritonserver - as child processes.

Apache Kafka (KRaft, single node) runs on the JVM from jars Maven fetches once
(:mod:`ops.embedded.kafka_dist`); ``tritonserver`` 2.51 with its python
backend ships in the ``nvidia-pytriton`` wheel (the ``local`` extra). Used by
``sie up`` and by the integration tests; the engine itself talks to any Kafka
and any Triton.
"""

from ops.embedded.kafka import BrokerSecurity, KafkaBroker, start_broker
from ops.embedded.kafka_dist import KAFKA_VERSION, kafka_libs
from ops.embedded.process import EmbeddedServerError, ManagedProcess, child_env, free_port
from ops.embedded.tritonserver import (
    TritonPaths,
    TritonProcess,
    discover_models,
    find_tritonserver,
    start_triton,
)
from streams.admin import create_topics, metadata_ok, upsert_scram_user, wait_for_broker

__all__ = [
    "KAFKA_VERSION",
    "BrokerSecurity",
    "EmbeddedServerError",
    "KafkaBroker",
    "ManagedProcess",
    "TritonPaths",
    "TritonProcess",
    "child_env",
    "create_topics",
    "discover_models",
    "find_tritonserver",
    "free_port",
    "kafka_libs",
    "metadata_ok",
    "start_broker",
    "start_triton",
    "upsert_scram_user",
    "wait_for_broker",
]
