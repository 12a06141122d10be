"""Settings as they may be shown: secret fields and credentials in URLs replaced by ``**********``.

``SecretStr`` fields are already redacted by pydantic's JSON dump. Plain string
settings that hold URLs (``otlp_endpoint``, ``triton.url``, ...) may carry
``user:password@`` credentials, which only this module hides. Use
:func:`settings_json` (``sie settings``) or :func:`settings_line` (logs) to show
settings; never ``str(settings)``. Nothing here changes the settings themselves.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel

REDACTED = "**********"

# user:password@ after "scheme://", or at the start of a scheme-less "host:port" value
# (or of one word in a command line, e.g. "url=user:password@host").
_PASSWORD = re.compile(r"(?P<pre>://|^|(?<=[\s,=;]))(?P<user>[^/@\s:,;=]*):(?P<secret>[^/@\s]*)@")
# A bare token as the user of a URL ("https://TOKEN@host").
_TOKEN = re.compile(r"(?P<pre>://)(?P<secret>[^/@\s:]+)@")


def redact_url(text: str) -> str:
    """``text`` with the password (or the bare token) of any URL credentials redacted."""
    text = _PASSWORD.sub(lambda m: f"{m['pre']}{m['user']}:{REDACTED}@", text)
    return _TOKEN.sub(lambda m: f"{m['pre']}{REDACTED}@", text)


def _redact_values(value: Any) -> Any:
    if isinstance(value, str):
        return redact_url(value)
    if isinstance(value, dict):
        return {k: _redact_values(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_values(v) for v in value]
    return value


def redacted_settings(settings: BaseModel) -> dict[str, Any]:
    """The settings as JSON-ready data, every secret and URL credential redacted."""
    data = json.loads(settings.model_dump_json())  # SecretStr fields become "**********"
    return dict(_redact_values(data))


def settings_json(settings: BaseModel) -> str:
    """The redacted settings, indented JSON (``sie settings``)."""
    return json.dumps(redacted_settings(settings), indent=2)


def settings_line(settings: BaseModel) -> str:
    """The redacted settings on one line (log messages)."""
    return json.dumps(redacted_settings(settings), separators=(",", ":"))
