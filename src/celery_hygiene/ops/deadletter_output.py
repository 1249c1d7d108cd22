"""``manage.py deadletter``: what it prints (the table, the summary, one dead letter, JSON)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from django.db.models import QuerySet

from celery_hygiene.failures.deadletters import describe_failure, format_utc, short_type
from celery_hygiene.failures.redaction import redact
from celery_hygiene.failures.replay import ReplayResult
from celery_hygiene.models import DeadLetter, DeadLetterReason, DeadLetterStatus
from celery_hygiene.ops.report import IncidentGroup

STATUSES = [choice.value for choice in DeadLetterStatus]
REASONS = [choice.value for choice in DeadLetterReason]


def iso(value: dt.datetime | None) -> str | None:
    """ISO 8601 in UTC (``+00:00``), whatever the server's zone."""
    if value is None:
        return None
    return (value.astimezone(dt.UTC) if value.tzinfo else value).isoformat()


def capped_count(queryset: QuerySet[DeadLetter], cap: int = 10_000) -> str:
    count = queryset.order_by()[: cap + 1].count()
    return f"more than {cap}" if count > cap else str(count)


def replay_note(result: ReplayResult, queue: str | None) -> str:
    """The History text of one replay."""
    where = f" to queue {queue}" if queue else ""
    note = f"; {result.message}" if result.message else ""
    return f"sent as task {result.task_id}{where}{note}"


def as_dict(dl: DeadLetter, *, full: bool = False) -> dict[str, Any]:
    """The JSON shape of ``list --json`` / ``show --json`` (payload redacted)."""
    data: dict[str, Any] = {
        "id": dl.pk,
        "task_name": dl.task_name,
        "task_id": dl.task_id,
        "args": redact(dl.args),
        "kwargs": redact(dl.kwargs),
        "exception_type": dl.exception_type,
        "exception_message": dl.exception_message,
        "attempts": dl.attempts,
        "status": dl.status,
        "reason": dl.reason,
        "failed_at": iso(dl.last_failed_at),
        "first_failed_at": iso(dl.first_failed_at),
        "entity": dl.entity,
        "operation": dl.operation,
        "queue": dl.queue,
        "replay_of": dl.replay_of_id,
        "replayed_task_id": dl.replayed_task_id,
        "replayed_at": iso(dl.replayed_at),
        "payload_truncated": dl.payload_truncated,
    }
    if full:
        data.update(
            exchange=dl.exchange,
            routing_key=dl.routing_key,
            priority=dl.priority,
            headers=redact(dl.headers),
            worker_hostname=dl.worker_hostname,
            payload_note=dl.payload_note,
            traceback=dl.traceback,
            replays=list(dl.replays.values_list("pk", flat=True)),
        )
    return data


def cut(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def format_table(rows: list[DeadLetter]) -> str:
    if not rows:
        return "no dead letters match"
    header = ("ID", "STATUS", "FAILED AT (UTC)", "TRIES", "TASK", "EXCEPTION", "ENTITY")
    lines = [
        (
            str(dl.pk),
            dl.status,
            dl.last_failed_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
            str(dl.attempts),
            cut(dl.task_name, 40),
            cut(
                f"{short_type(dl.exception_type)}: "
                f"{describe_failure(dl.exception_type, dl.exception_message)}",
                60,
            ),
            cut(dl.entity, 24),
        )
        for dl in rows
    ]
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *lines]
    )


def format_summary(groups: list[IncidentGroup], since: dt.datetime) -> str:
    if not groups:
        return f"no dead letters since {format_utc(since)}"
    header = ("COUNT", "PENDING", "TASK", "EXCEPTION", "REASON", "FIRST (UTC)", "LAST (UTC)")
    lines = [
        (
            str(g.count),
            str(g.pending),
            g.task_name,
            g.exception_type,
            g.reason,
            g.first_failed_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
            g.last_failed_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        )
        for g in groups
    ]
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    table = [
        "  ".join(
            cell.rjust(w) if i < 2 else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in [header, *lines]
    ]
    total = sum(g.count for g in groups)
    pending = sum(g.pending for g in groups)
    table.append(
        f"{total} dead letters ({pending} pending) in {len(groups)} groups since "
        f"{format_utc(since)}. Narrow with: deadletter list --task T --exception E --reason R"
    )
    return "\n".join(table)


def format_detail(dl: DeadLetter, data: dict[str, Any] | None = None) -> str:
    data = dict(data) if data is not None else as_dict(dl, full=True)
    for key in ("failed_at", "first_failed_at", "replayed_at"):
        if data.get(key):
            data[key] = format_utc(getattr(dl, "last_failed_at" if key == "failed_at" else key))
    data["explanation"] = describe_failure(dl.exception_type, dl.exception_message)
    traceback = data.pop("traceback") or "(none)"
    payload = {key: data.pop(key) for key in ("args", "kwargs", "headers")}
    width = max(len(key) for key in data)
    lines = [f"{key.ljust(width)}  {'' if value is None else value}" for key, value in data.items()]
    for key, value in payload.items():
        lines.append(f"\n{key}:\n{json.dumps(value, indent=2, sort_keys=True)}")
    lines.append(f"\ntraceback:\n{traceback}")
    return "\n".join(lines)
