"""Untrusted text made safe for logs and headers: escaped repr-style, bounded."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from engine.safe_text import cleaned, shown


def test_shown_escapes_control_characters_like_repr() -> None:
    assert shown("a\nb\x1b[31m\r\t\u202e\\'") == "'a\\nb\\x1b[31m\\r\\t\\u202e\\\\\\''"


def test_shown_keeps_printable_text_including_non_ascii_letters() -> None:
    assert shown("café 東京") == "'café 東京'"


def test_shown_cuts_long_text_and_says_how_much_was_left_out() -> None:
    assert shown("x" * 205, limit=200) == "'" + "x" * 200 + "'...(+5 chars)"


def test_shown_never_splits_an_escape_sequence() -> None:
    out = shown("ab" + "\x00" * 10, limit=9)  # each NUL is 4 characters escaped
    assert out == "'ab\\x00'...(+9 chars)"


def test_shown_bytes_that_are_not_utf8_appear_as_hex_escapes() -> None:
    assert shown(b"ok \xff\xfe \xc3\xa9") == "'ok \\xff\\xfe é'"


def test_cleaned_leaves_printable_text_that_fits_unchanged() -> None:
    message = "input 'x' is a string ('a\\nb'); FP32 takes numbers"
    assert cleaned(message, 100) is message


def test_cleaned_escapes_and_cuts() -> None:
    assert cleaned("bad\njson", 100) == "bad\\njson"
    assert cleaned("y" * 12, 10) == "y" * 10 + "...(+2 chars)"


@given(st.one_of(st.text(), st.binary()), st.integers(min_value=1, max_value=300))
def test_shown_is_printable_and_bounded_for_any_input(text: str | bytes, limit: int) -> None:
    out = shown(text, limit)
    assert out.isprintable()
    body = out.rsplit("'...(+", 1)[0] if "'...(+" in out else out[:-1]
    assert len(body) <= limit + 1  # the opening quote
