"""Reading the workers' logs: when and how each execution of a task ended (Celery's "succeeded" /
"raised" / "retry" line, per process group and task id), and how often each marker of a fault's
effect (a retry scheduled, a lost claim, a broker connection lost, ...) shows up."""

from __future__ import annotations

import contextlib
import datetime as dt
import re
from collections import defaultdict
from typing import TypeAlias

from chaos.harness.workers import Pool

# A line Celery logs when an execution of a task ends (success, failure, retry, ignore, reject).
END_RE = re.compile(
    r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): [A-Z]+/[^\]]+\] "
    r"Task chaos\.\w+\[([0-9a-f-]{36})\] (?!received$)(\w+)"
)
# Per worker process group, per task id: (when, how) each execution ended.
ExecutionEnds: TypeAlias = dict[int, dict[str, list[tuple[float, str]]]]
LOG_MARKERS = (
    "task_retry_scheduled",
    "task_claim_busy",
    "task_duplicate",
    "task_claim_lost",
    "claim_complete_retry",
    "claim_complete_failed",
    "claim_release_failed",
    "task_dead_lettered",
    "OperationalError",
    "Connection to broker lost",
    "Couldn't ack",
    "WorkerLostError",
)


AMORTIZED_MARKERS = (
    "amortized_completion_started",
    "amortized_completion_stopped",
    "completion_batch_failed",
    "completion_batch_abandoned",
)


def worker_log_counts(pool: Pool, amortized: bool = False) -> dict[str, int]:
    """How often the workers logged each marker: shows that the faults reached them."""
    markers = LOG_MARKERS + (AMORTIZED_MARKERS if amortized else ())
    counts = dict.fromkeys(markers, 0)
    for worker in pool.dead + pool.live:
        with contextlib.suppress(OSError):
            text = worker.logfile.read_text(errors="replace")
            for marker in markers:
                counts[marker] += text.count(marker)
    return counts


def execution_ends(pool: Pool) -> ExecutionEnds:
    """Per worker process group, per task id: when Celery logged the end of an execution, and
    how it ended (the word after the task id: "succeeded", "raised", "retry", ...)."""
    ends: dict[int, dict[str, list[tuple[float, str]]]] = {}
    for worker in pool.dead + pool.live:
        per_id: dict[str, list[tuple[float, str]]] = defaultdict(list)
        with contextlib.suppress(OSError):
            for line in worker.logfile.read_text(errors="replace").splitlines():
                match = END_RE.match(line)
                if match:
                    stamp = dt.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
                    # local time, like Celery
                    per_id[match.group(2)].append((stamp.timestamp(), match.group(3)))
        ends[worker.pid] = per_id
    return ends
