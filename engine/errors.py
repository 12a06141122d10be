"""The engine's one error hierarchy.

Whether a failure is retried or dead-lettered is decided by its class:

* :class:`RetryableError` - the batch is retried with backoff (the
  backend unavailable, queue full, deadline exceeded). Never dead-lettered.
* :class:`FatalError` - the batch cannot succeed as sent; its events go to
  the DLQ with ``reason``.
* :class:`EventError` - one event is invalid; it travels as a value to the
  DLQ (see :class:`engine.records.DeadLetter`).
* :class:`OutputRejected` - Kafka refuses an output for good (too large, not
  authorised, unknown topic); retried a few times, then the worker stops.
* :class:`ConfigError` - the settings, a model's config or the installed
  libraries are wrong: an operator's problem, neither retried nor dead-lettered.

Whether an error is retried (its class), the dead-letter ``reason`` and the
metrics label ``code`` are class attributes; a backend error's ``code`` (e.g. a
gRPC status) is given to the constructor. Adapters wrap the exceptions of their
libraries (tritonclient, confluent-kafka) into subclasses of :class:`EngineError`
at their boundary; per-area subclasses live beside them (e.g.
``streams.admin.KafkaAdminError``, ``inference.model_control.ModelControlError``).
"""

from __future__ import annotations

from enum import Enum

from engine.safe_text import cleaned

_MAX_DESCRIPTION = 500


class Reason(str, Enum):
    """Stable machine-readable codes written to the ``error.reason`` header."""

    INVALID_JSON = "invalid_json"
    INVALID_EVENT = "invalid_event"
    MISSING_ID = "missing_id"
    UNKNOWN_MODEL = "unknown_model"
    MISSING_INPUT = "missing_input"
    BAD_SHAPE = "bad_shape"
    BAD_DTYPE = "bad_dtype"
    TOO_LARGE = "too_large"
    INFERENCE_ERROR = "inference_error"


class EngineError(Exception):
    """Base of every error the engine raises on purpose."""

    code: str | None = None  # a bounded label for metrics (see error_code); None: the class name

    def __init__(self, *args: object, code: str | None = None) -> None:
        super().__init__(*args)
        if code is not None:
            self.code = code


class RetryableError(EngineError):
    """A transient failure: try the same work again later."""


class FatalError(EngineError):
    """A failure that retrying cannot fix."""

    reason: Reason = Reason.INFERENCE_ERROR


class InferenceFailed(FatalError):
    """The inference backend rejected a batch (bad input, model error): dead-letter it."""


class ModelNotFound(FatalError):
    """The requested model is not served by the inference backend."""

    reason = Reason.UNKNOWN_MODEL


class BackendUnavailable(RetryableError):
    """The inference backend is unreachable, overloaded or timed out."""


class EventError(EngineError):
    """One event is invalid; carries its reason code."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class OutputRejected(EngineError):
    """Kafka refused outputs with an error that retrying cannot fix (streams/sink.py)."""


class ConfigError(EngineError):
    """The settings, a model's config or the model repository are invalid, or an installed library
    lacks what the engine needs: nothing to retry, no event to blame."""


def error_code(err: BaseException) -> str:
    """A bounded label for an error: its ``code`` (a backend error's gRPC status), else its class name."""
    code = err.code if isinstance(err, EngineError) else None
    return code if isinstance(code, str) else type(err).__name__


def describe(err: BaseException) -> str:
    """A short description of an unexpected error for ``error.message``, escaped and bounded.

    Error text can quote what a server or a library was given (an inference server's messages do).
    """
    return cleaned(f"{type(err).__name__}: {err}", _MAX_DESCRIPTION)
