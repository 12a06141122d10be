"""Expected errors of the ``sie`` command line: one clear line and exit status 1.

Expected: a port in use (:class:`~ops.stack.StackError`), a missing binary,
Java or a server that would not start (:class:`~ops.embedded.EmbeddedServerError`),
a broker that does not answer or refuses a topic (:class:`~streams.admin.KafkaAdminError`),
invalid settings (pydantic ``ValidationError`` of a ``*Settings`` model) and Kafka refusing a request
(:class:`~streams.kafka_tools.KafkaToolError`, e.g. ``sie replay`` of a DLQ topic that does not
exist, or a ``KafkaException`` of confluent-kafka used directly by ``ops/``). Any
other exception is a bug and keeps its traceback; so do expected ones with the
global ``--debug`` flag.
"""

from __future__ import annotations

from typing import Any

import typer
from pydantic import ValidationError
from typer.core import TyperGroup

from engine.redact import redact_url

EXIT_EXPECTED_ERROR = 1
DEBUG_PARAM = "debug"


def is_expected(exc: BaseException) -> bool:
    """Whether ``exc`` is an operator's problem (configuration, environment), not a bug."""
    from confluent_kafka import KafkaException

    from ops.embedded.process import EmbeddedServerError
    from ops.stack import StackError
    from streams.admin import KafkaAdminError
    from streams.kafka_tools import KafkaToolError

    if isinstance(exc, ValidationError):  # of the settings; other models' are bugs
        return exc.title.endswith("Settings")
    expected = (StackError, EmbeddedServerError, KafkaAdminError, KafkaToolError, KafkaException)
    return isinstance(exc, expected)


def _env_name(loc: tuple[int | str, ...]) -> str | None:
    if not loc or not all(isinstance(part, str) for part in loc):
        return None
    return "SIE_" + "__".join(str(part).upper() for part in loc)


def describe_validation_error(exc: ValidationError) -> str:
    """``invalid setting a.b (SIE_A__B): what is wrong``, one per error; never the value given."""
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = tuple(error["loc"])
        where = ".".join(str(part) for part in loc) or exc.title
        env = _env_name(loc) if exc.title == "Settings" else None
        problems.append(f"{where}{f' ({env})' if env else ''}: {error['msg']}")
    noun = "setting" if exc.title == "Settings" else exc.title
    return f"invalid {noun} " + "; ".join(problems)


def describe(exc: BaseException) -> str:
    """One line saying what went wrong (credentials in URLs redacted)."""
    text = describe_validation_error(exc) if isinstance(exc, ValidationError) else str(exc)
    return redact_url(" ".join(text.split()))


class ExpectedErrorsGroup(TyperGroup):
    """The root command group: turns expected errors into one line on stderr and exit status 1."""

    # ``ctx`` is the click Context typer uses (vendored as typer._click in newer typer): Any keeps
    # this override valid whichever click that is.
    def invoke(self, ctx: Any) -> Any:
        """Run the command; an expected error ends it with one line unless ``--debug`` was given."""
        try:
            return super().invoke(ctx)
        except Exception as exc:
            if ctx.params.get(DEBUG_PARAM) or not is_expected(exc):
                raise
            typer.echo(f"error: {describe(exc)}", err=True)
            raise typer.Exit(EXIT_EXPECTED_ERROR) from None
