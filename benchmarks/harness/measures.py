"""Summaries of timings in milliseconds (n, median, p99, mean), and a worker's overhead per task:
the time from ``task_prerun`` to ``task_postrun`` minus the body's own time."""

from __future__ import annotations

import statistics


def stats(values: object) -> dict:
    xs = sorted(float(v) for v in values)  # type: ignore[attr-defined]
    if not xs:
        return {"n": 0}
    p99 = xs[min(len(xs) - 1, int(round(0.99 * (len(xs) - 1))))]
    return {
        "n": len(xs),
        "median_ms": 1000 * statistics.median(xs),
        "p99_ms": 1000 * p99,
        "mean_ms": 1000 * statistics.fmean(xs),
    }


def overhead(samples: list[tuple[str, float, float]], name: str) -> dict:
    return stats(total - body for n, total, body in samples if n == name)
