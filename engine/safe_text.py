"""Attacker-controlled text made safe to write into a log line or a record header.

Event values, keys and headers come from whoever can produce to the input
topic. Before any of that text reaches a log or an ``error.message`` header it
goes through :func:`shown` (or :func:`cleaned` for a message that quotes such
text already): control characters, line breaks, escape sequences and other
non-printable characters are escaped the way ``repr`` does, and the text is cut
to a bound, with a note of how much was left out.
"""

from __future__ import annotations

SHOWN_CHARS = 200  # characters of untrusted text shown by default


def shown(text: str | bytes, limit: int = SHOWN_CHARS) -> str:
    """``text`` quoted repr-style: escaped, at most ``limit`` characters inside the quotes.

    Bytes that are not UTF-8 are shown as ``\\xNN``. Anything past the limit
    is replaced by ``...(+N chars)`` after the closing quote.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", "surrogateescape")
    body, used = _escaped_prefix(text, limit, specials="\\'")
    return f"'{body}'{_rest(len(text) - used)}"


def cleaned(text: str, limit: int) -> str:
    """``text`` with non-printable characters escaped (repr-style), cut to ``limit`` characters.

    Printable text that fits is returned unchanged, so a message whose
    untrusted parts went through :func:`shown` stays as it is.
    """
    if text.isprintable():
        return text if len(text) <= limit else text[:limit] + _rest(len(text) - limit)
    body, used = _escaped_prefix(text, limit, specials="")
    return body + _rest(len(text) - used)


def _escaped_prefix(text: str, limit: int, specials: str) -> tuple[str, int]:
    """The escaped form of the longest prefix of ``text`` that fits ``limit``, and that prefix's length.

    ``specials``: printable characters to escape with a backslash as well.
    """
    parts: list[str] = []
    size = 0
    used = 0
    for char in text[:limit]:  # each character escapes to one or more
        piece = _escape(char, specials)
        if size + len(piece) > limit:
            break
        parts.append(piece)
        size += len(piece)
        used += 1
    return "".join(parts), used


def _escape(char: str, specials: str) -> str:
    if char in specials:
        return "\\" + char
    if char.isprintable():
        return char
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return repr(char)[1:-1]


def _rest(left_out: int) -> str:
    return f"...(+{left_out} chars)" if left_out > 0 else ""
