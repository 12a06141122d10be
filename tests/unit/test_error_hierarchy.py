"""Every error the project raises on purpose derives from engine.errors.EngineError."""

from __future__ import annotations

import pytest

from engine.errors import ConfigError, EngineError
from ops.embedded import EmbeddedServerError
from ops.stack import StackError
from streams.admin import KafkaAdminError


@pytest.mark.parametrize("error", [StackError, EmbeddedServerError, KafkaAdminError, ConfigError])
def test_operator_errors_are_engine_errors(error: type[Exception]) -> None:
    assert issubclass(error, EngineError)


@pytest.mark.parametrize("error", [StackError, EmbeddedServerError, KafkaAdminError])
def test_operator_errors_print_one_line_in_the_cli(error: type[Exception]) -> None:
    from ops.cli_errors import is_expected

    assert is_expected(error("port 9092 in use"))
