"""Session traces to pandas: tidy tables that are pure functions of the event log."""

from __future__ import annotations

import math


def speedups(iterations: list) -> list[float]:
    """Each iteration's speedup against the median eager iteration of its cell (NaN without one)."""
    eager = sorted(it.wall_ms for it in iterations if it.mode == "eager")
    if not eager:
        return [math.nan] * len(iterations)
    base = eager[len(eager) // 2]
    return [base / it.wall_ms if it.wall_ms > 0 else math.nan for it in iterations]
