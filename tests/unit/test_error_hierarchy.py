"""Every error the project raises on purpose derives from engine.errors.EngineError."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

import engine.errors as errors
from engine.errors import (
    BackendUnavailable,
    ConfigError,
    EngineError,
    FatalError,
    InferenceFailed,
    ModelNotFound,
    Reason,
    RetryableError,
    error_code,
)
from inference.model_control import ModelControlError
from inference.repository import RepositoryError
from ops.embedded import EmbeddedServerError
from ops.stack import StackError
from streams.admin import KafkaAdminError
from streams.kafka_tools import KafkaToolError, consume, produce_all

OPERATOR_ERRORS = [StackError, EmbeddedServerError, KafkaAdminError, KafkaToolError]


@pytest.mark.parametrize(
    "error", [*OPERATOR_ERRORS, ConfigError, RepositoryError, ModelControlError, errors.OutputRejected]
)
def test_operator_errors_are_engine_errors(error: type[Exception]) -> None:
    assert issubclass(error, EngineError)


@pytest.mark.parametrize("error", OPERATOR_ERRORS)
def test_operator_errors_print_one_line_in_the_cli(error: type[Exception]) -> None:
    from ops.cli_errors import is_expected

    assert is_expected(error("port 9092 in use"))


def test_a_config_error_is_neither_retried_nor_dead_lettered() -> None:
    assert not issubclass(ConfigError, (RetryableError, FatalError))
    assert not hasattr(ConfigError, "reason")  # no inference reason inherited


def test_retryable_fatal_and_the_reason_are_class_attributes() -> None:
    assert issubclass(BackendUnavailable, RetryableError)
    assert issubclass(InferenceFailed, FatalError) and InferenceFailed.reason is Reason.INFERENCE_ERROR
    assert issubclass(ModelNotFound, FatalError) and ModelNotFound.reason is Reason.UNKNOWN_MODEL


def test_the_code_is_a_declared_attribute_given_to_the_constructor() -> None:
    assert EngineError.code is None and "code" not in vars(BackendUnavailable("down"))
    assert error_code(BackendUnavailable("down")) == "BackendUnavailable"
    assert error_code(BackendUnavailable("down", code="UNAVAILABLE")) == "UNAVAILABLE"
    assert error_code(ValueError("a bug")) == "ValueError"


def test_the_circuit_breaker_waits_and_raises_nothing_of_its_own() -> None:
    assert not hasattr(errors, "CircuitOpen")  # it was never raised: an open circuit makes calls wait


class _Status:
    def __init__(self, status: str) -> None:
        self._status = status

    def status(self) -> str:
        return self._status

    def message(self) -> str:
        return "boom"


@pytest.mark.parametrize(
    ("status", "kind", "code"),
    [
        ("StatusCode.UNAVAILABLE", BackendUnavailable, "UNAVAILABLE"),
        ("StatusCode.NOT_FOUND", ModelNotFound, "NOT_FOUND"),
        ("StatusCode.INVALID_ARGUMENT", InferenceFailed, "INVALID_ARGUMENT"),
        ("", InferenceFailed, "CLIENT"),
    ],
)
def test_triton_errors_are_wrapped_with_their_status_as_code(status: str, kind: type, code: str) -> None:
    from inference.triton import classify

    err = classify(_Status(status), "m")  # type: ignore[arg-type]
    assert type(err) is kind and err.code == code and error_code(err) == code
    assert f"{code}: boom" in str(err)


class _RefusingProducer:
    def __init__(self, config: Any) -> None:
        self._callbacks: list[Any] = []

    def produce(self, topic: str, **kw: Any) -> None:
        self._callbacks.append(kw["on_delivery"])

    def poll(self, _timeout: float) -> int:
        return 0

    def flush(self, _timeout: float) -> int:
        for callback in self._callbacks:
            callback(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), None)
        return 0


def test_kafka_tools_raise_their_own_error_not_kafka_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    import streams.kafka_tools as kafka_tools
    import streams.producer

    monkeypatch.setattr(streams.producer, "Producer", _RefusingProducer)
    with pytest.raises(KafkaToolError, match="1 records were not delivered"):
        produce_all({}, "t", [(b"v", None)])

    def refused(config: Any) -> Any:
        raise KafkaException(KafkaError(KafkaError._INVALID_ARG, "bad config"))

    monkeypatch.setattr(kafka_tools, "Consumer", refused)
    with pytest.raises(KafkaToolError, match="cannot read 't'") as caught:
        next(consume({}, "t"))
    assert isinstance(caught.value.__cause__, KafkaException)
