"""Figures → Markdown tables (min / median / max over repeated runs)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def mmm(values: Sequence[float], fmt: str = "{:.3g}") -> str:
    if not values:
        return "—"
    return " / ".join(fmt.format(v) for v in (min(values), statistics.median(values),
                                              max(values)))


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)
