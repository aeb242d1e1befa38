"""Sizes and durations as people write them (``256MB``, ``1GiB``, ``90s``, ``1h30m``).

Shared by the CLI's option types and the job configs, so both accept exactly the same text.
"""

from __future__ import annotations

import math
import re

SIZE_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*")
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_size(text: str) -> int:
    """Bytes in ``text``: ``1048576``, ``64MB`` (10**6), ``1GiB`` (2**30), ``1.5GB``."""
    match = _SIZE.fullmatch(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in SIZE_UNITS:
        raise ValueError(
            f"{text!r} is not a size; write bytes or a number with one of "
            "KB MB GB TB (powers of 1000) or KiB MiB GiB TiB (powers of 1024), e.g. 256MB"
        )
    size = int(float(match.group(1)) * SIZE_UNITS[unit])
    if size < 1:
        raise ValueError(f"{text!r} is not a positive size")
    return size


def format_size(size: float) -> str:
    """``size`` bytes for people: ``1.9 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def parse_duration(text: str) -> float:
    """Seconds in ``text``: ``90`` (seconds), ``90s``, ``15m``, ``1h30m``, ``2d``.

    ``nan`` and ``inf`` (which ``float`` accepts) are refused: no timer, lease or deadline can
    use them, and they would only fail later, far from the text that said so.
    """
    text = text.replace(" ", "")
    try:
        seconds = float(text)
    except ValueError:
        parts = _DURATION.findall(text)
        if not text or "".join(n + u for n, u in parts) != text:
            raise ValueError(f"{text!r} is not a duration; write seconds or e.g. 90s, 15m, "
                             "1h30m, 2d") from None
        seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    if not math.isfinite(seconds):
        raise ValueError(f"{text!r} is not a duration: it must be a finite number of seconds")
    return seconds
