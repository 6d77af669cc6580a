"""Printing benchmark figures as aligned tables, and keeping them as JSON."""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(os.environ.get("WAKEFIELD_BENCH_OUT", ".wakefield/bench"))


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    """p50, p99 and mean of durations, in milliseconds."""
    ms = [s * 1e3 for s in seconds]
    return {
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "mean_ms": statistics.fmean(ms),
        "n": len(ms),
    }


def table(
    title: str, rows: list[dict[str, Any]], columns: list[str] | None = None
) -> str:
    """A plain-text table; numbers get sensible precision."""
    if not rows:
        return f"{title}\n  (no rows)\n"
    columns = columns or list(rows[0])
    cells = [[_fmt(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = [
        title,
        "  " + "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)),
    ]
    lines.append("  " + "  ".join("-" * w for w in widths))
    for row in cells:
        lines.append(
            "  "
            + "  ".join(
                v.rjust(w) if _numeric(v) else v.ljust(w)
                for v, w in zip(row, widths, strict=True)
            )
        )
    return "\n".join(lines) + "\n"


def _numeric(text: str) -> bool:
    try:
        float(text.replace("x", "").replace("%", ""))
        return True
    except ValueError:
        return False


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        if abs(value) >= 0.01:
            return f"{value:.3f}"
        return f"{value:.2e}"
    return str(value)


def save(suite: str, figures: dict[str, Any]) -> Path:
    """Keep a suite's figures as JSON for later comparison."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{suite}.json"
    path.write_text(
        json.dumps(
            {
                "suite": suite,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "figures": figures,
            },
            indent=2,
            default=str,
        )
    )
    return path
