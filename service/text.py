"""Text helpers shared by every layer."""

from __future__ import annotations

_LIMIT = 300


def one_line(text: str) -> str:
    """`text` as one bounded line: control characters (newlines included) are escaped, so a
    caller-chosen name inside a message can never split a log line or an answer."""
    if text.isprintable() and len(text) <= _LIMIT:
        return text
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return shown if len(shown) <= _LIMIT else shown[: _LIMIT - 3] + "..."
