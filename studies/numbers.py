"""Numbers for people: durations, shares and counts as every admin page shows them.

Plain functions, so list displays and services use the same words as templates (which load them
as filters with `{% load numbers %}`).
"""

from __future__ import annotations


def duration_text(seconds: float | None) -> str:
    """`0.12 s`, `4.3 s`, `45 s`, `2 min 13 s` or `1 h 02 min`; a hyphen for None."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds:.2f} s"
    if seconds < 10:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if not minutes:
        return f"{secs} s"
    if minutes < 60:
        return f"{minutes} min {secs} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def percent_text(share: float | None, digits: int = 0) -> str:
    """`42%` for 0.42 (`42.1%` with one digit); a hyphen for None."""
    return "-" if share is None else f"{share:.{digits}%}"


def thousands_text(count: float | None) -> str:
    """`12,345` for a count (rounded to a whole number); a hyphen for None."""
    return "-" if count is None else f"{round(count):,}"
