"""Hatchet duration expressions ("1m", "30s", "1h30m", "250ms") as seconds."""

from __future__ import annotations

import re

_COMPONENT = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(expr: str, *, default: float) -> float:
    """Return the number of seconds in a Hatchet duration expression.

    An empty expression means "not set" and gives ``default``. A bare number is read as
    seconds, as older engines did. Anything else that is not a sum of ``<number><unit>``
    components raises :class:`ValueError`.
    """
    text = expr.strip()
    if not text:
        return default
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    total = 0.0
    position = 0
    for match in _COMPONENT.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if position != len(text):
        raise ValueError(f"invalid duration expression: {expr!r}")
    return total
