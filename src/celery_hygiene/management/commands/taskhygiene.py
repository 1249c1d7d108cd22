"""``manage.py taskhygiene report|check``: which tasks to split, and is the Celery config sane.

- ``report``: per task name, runs and p50 / p95 / max duration from the workers' statistics, and
  how many runs the duration watchdog flagged.
- ``claims --stale``: claims whose lease expired long ago with nobody taking them over: work
  that started and never finished, with no message left to finish it.
- ``resend [--dry-run]``: publish the messages parked in the outbox because the broker refused
  them (workers do this on their own every ``OUTBOX_SWEEP_SECONDS``; this is for when none runs).
- ``relay [--once]``: re-send unsettled ``delay_on_commit`` intents (every worker does this on
  its own every ``ENQUEUE_SWEEP_SECONDS``): a dedicated process, or ``--once`` from cron.
- ``purge-claims --older-than 30d``: retention for finished claims, in short batches.
- ``check``: the hygiene audit (the ``celery_hygiene`` system checks). Exits 1 when a message is
  at or above ``--fail-level`` (default ERROR), so it can gate a deploy. ``--tasks`` first lists
  what hygiene does to each task (retries, dead letter, time limits, queue) and where that
  differs from plain Celery: the dry run of a fleet-wide (``task_cls``) migration.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from django.core import checks
from django.core.management.base import BaseCommand, CommandError, CommandParser

from celery_hygiene.failures.deadletters import format_utc
from celery_hygiene.failures.durations import DurationError, duration_option
from celery_hygiene.failures.selection import since_utc
from celery_hygiene.models import OutboxMessage
from celery_hygiene.ops.report import TaskDurations, duration_report

LEVELS = {
    "DEBUG": checks.DEBUG,
    "INFO": checks.INFO,
    "WARNING": checks.WARNING,
    "ERROR": checks.ERROR,
    "CRITICAL": checks.CRITICAL,
}


class Command(BaseCommand):
    help = "Task duration report and Celery configuration audit."
    # `check` runs the hygiene checks itself; Django's run before every command would print
    # them twice (and could stop `report` on an unrelated error).
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
        report = sub.add_parser("report", help="Runs and p50/p95/max duration per task name.")
        report.add_argument(
            "--since",
            default="7d",
            help="A duration ago (24h, 7d) or a UTC date/time (2026-05-01). Default 7d.",
        )
        report.add_argument("--task", help="Only task names matching this glob, e.g. 'shop.*'.")
        report.add_argument("--json", action="store_true", help="One JSON array, for scripts.")

        stale = sub.add_parser(
            "claims", help="List claims whose lease expired without anyone finishing the work."
        )
        stale.add_argument("--stale", action="store_true", required=True, help="(required)")
        stale.add_argument(
            "--expired-for", default="1h", help="Lease expired at least this long ago (1h, 2d)."
        )
        stale.add_argument("--limit", type=int, default=100)
        stale.add_argument("--json", action="store_true", help="One JSON array, for scripts.")

        resend = sub.add_parser(
            "resend", help="Publish messages parked because the broker refused them."
        )
        resend.add_argument("--dry-run", action="store_true", help="List them; send nothing.")

        relay = sub.add_parser(
            "relay", help="Re-send unsettled delay_on_commit intents until stopped (SIGTERM)."
        )
        relay.add_argument("--once", action="store_true", help="One round, then exit (cron).")
        relay.add_argument(
            "--interval",
            type=float,
            default=None,
            help="Seconds between rounds (default ENQUEUE_SWEEP_SECONDS).",
        )

        purge = sub.add_parser(
            "purge-claims", help="Delete claims that finished long ago, in short batches."
        )
        purge.add_argument("--older-than", required=True, help="Age, e.g. 30d, 12h, 2w.")
        purge.add_argument(
            "--include-dead",
            action="store_true",
            help="Also delete dead claims (they stop duplicates until a replay re-opens them).",
        )
        purge.add_argument("--batch-size", type=int, default=5000)

        check = sub.add_parser("check", help="Audit the Celery configuration; exit 1 on errors.")
        check.add_argument(
            "--fail-level",
            default="ERROR",
            choices=sorted(LEVELS, key=LEVELS.__getitem__),
            help="Exit 1 if a message is at least this serious (default ERROR).",
        )
        check.add_argument("--json", action="store_true", help="One JSON array, for scripts.")
        check.add_argument(
            "--task",
            help="Audit only tasks matching this glob, e.g. 'shop.*' (config rules still run).",
        )
        check.add_argument(
            "--tasks",
            action="store_true",
            help="Also list what hygiene does to each task (retries, dead letter, time limits) "
            "and where it differs from plain Celery: a dry run before deploying task_cls.",
        )

    def handle(self, *args: Any, subcommand: str, **options: Any) -> None:
        if subcommand == "report":
            self._report(options)
        elif subcommand == "claims":
            self._stale_claims(options)
        elif subcommand == "resend":
            self._resend(options)
        elif subcommand == "relay":
            self._relay(options)
        elif subcommand == "purge-claims":
            self._purge_claims(options)
        else:
            self._check(options)

    def _report(self, options: dict[str, Any]) -> None:
        try:
            since = since_utc(options["since"])  # a date without offset is UTC, as printed
        except DurationError as exc:
            raise CommandError(str(exc)) from exc
        rows = duration_report(since=since, task_pattern=options["task"])
        if options["json"]:
            self.stdout.write(json.dumps([asdict(row) for row in rows], indent=2))
            return
        if not rows:
            self.stdout.write(f"No task runs recorded since {format_utc(since)}.")
        else:
            self.stdout.write(_table(rows))
        self.stdout.write(_intents_line())
        self.stdout.write(_freshness())

    def _stale_claims(self, options: dict[str, Any]) -> None:
        from celery_hygiene.claims.state import stale_claims

        expired_for = duration_option(options["expired_for"], "--expired-for")
        if options["limit"] < 1:
            raise CommandError("--limit must be at least 1.")
        rows = [
            {
                "entity": c.entity,
                "operation": c.operation,
                "task_name": c.task_name,
                "status": c.status,
                "owner_task_id": c.owner_task_id,
                "owner_worker": c.owner_worker,
                "attempts": c.attempts,
                "lease_expired_at": c.lease_expires_at.isoformat() if c.lease_expires_at else None,
            }
            for c in stale_claims(expired_for=expired_for)[: options["limit"]]
        ]
        from celery_hygiene.failures import outbox

        unsent = outbox.waiting()
        if options["json"]:
            self.stdout.write(json.dumps(rows, indent=2))
            return
        if unsent:
            self.stdout.write(
                f"{unsent} message(s) wait in the outbox (the broker refused them); "
                "workers re-send them, or run: manage.py taskhygiene resend"
            )
        if not rows:
            self.stdout.write("No stale claims.")
        else:
            for row in rows:
                self.stdout.write(
                    f"{row['lease_expired_at']}  {row['task_name']}  ({row['entity']}, "
                    f"{row['operation']})  {row['status']}  owner={row['owner_task_id']} "
                    f"on {row['owner_worker'] or '?'}  attempts={row['attempts']}"
                )

    def _relay(self, options: dict[str, Any]) -> None:
        import signal
        import threading

        from celery_hygiene import conf
        from celery_hygiene.claims.dbretry import close_broken_connections
        from celery_hygiene.failures import intents
        from celery_hygiene.failures.replay import celery_app

        app = celery_app()
        stop = threading.Event()
        if not options["once"]:
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: stop.set())
            self.stdout.write("relay: started")
        while True:
            try:
                done = intents.relay(app)
            except Exception as exc:  # noqa: BLE001 - database or broker away: next round
                close_broken_connections()
                if options["once"]:
                    raise CommandError(f"relay round failed: {exc!r}") from exc
                self.stderr.write(f"relay round failed: {exc!r}")
            else:
                if options["once"] or done.sent or done.undeliverable or done.failed:
                    self.stdout.write(
                        f"relay: sent={done.sent} settled={done.settled} waiting={done.waiting} "
                        f"undeliverable={done.undeliverable} failed={done.failed}"
                    )
            if options["once"]:
                return
            interval = options["interval"] or float(conf.get("ENQUEUE_SWEEP_SECONDS"))
            if stop.wait(interval):
                self.stdout.write("relay: stopped")
                return

    def _resend(self, options: dict[str, Any]) -> None:
        from celery_hygiene.failures import outbox
        from celery_hygiene.failures.replay import celery_app

        if options["dry_run"]:
            for row in OutboxMessage.objects.order_by("next_try_at"):
                self.stdout.write(
                    f"{format_utc(row.created_at)}  {row.task_name}[{row.task_id}]  "
                    f"reason={row.reason}  tries={row.attempts}  last_error={row.last_error}"
                )
            return
        sent = total = 0
        while True:
            sent = outbox.resend_due(celery_app())
            total += sent
            if sent < outbox.BATCH:
                break
        left = outbox.waiting()
        self.stdout.write(f"Re-sent {total} message(s); {left} left in the outbox.")
        if left:
            raise CommandError("Some messages could not be sent (broker away?) or are not due.")

    def _purge_claims(self, options: dict[str, Any]) -> None:
        from celery_hygiene.failures.retention import purge_claims

        older_than = duration_option(options["older_than"], "--older-than")
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1.")
        statuses = ("succeeded", "dead") if options["include_dead"] else ("succeeded",)
        deleted = purge_claims(
            older_than=older_than, statuses=statuses, batch_size=options["batch_size"]
        )
        self.stdout.write(
            f"purged {deleted} claims ({', '.join(statuses)}) older than {options['older_than']}"
        )

    def _check(self, options: dict[str, Any]) -> None:
        if options["task"]:
            messages = _audit_only(options["task"])
        else:
            messages = checks.run_checks(tags=["celery_hygiene"], include_deployment_checks=True)
        plans = _task_plans(options["task"]) if options["tasks"] else None
        if options["json"]:
            found = [_as_dict(m) for m in messages]
            tasks = None if plans is None else [plan.as_dict() for plan in plans]
            payload: Any = found if tasks is None else {"tasks": tasks, "messages": found}
            self.stdout.write(json.dumps(payload, indent=2))
        else:
            if plans is not None:
                from celery_hygiene.ops.task_plan import render, setting_note

                self.stdout.write(setting_note())
                self.stdout.write(render(plans) + "\n")
            if not messages:
                self.stdout.write("Celery hygiene: no issues found.")
            for message in messages:
                stream = self.stderr if message.is_serious() else self.stdout
                stream.write(f"{_level_name(message.level)} {message}")
        fail_level = LEVELS[options["fail_level"]]
        failing = [m for m in messages if m.level >= fail_level and not m.is_silenced()]
        if failing:
            raise CommandError(
                f"{len(failing)} hygiene issue(s) at {options['fail_level']} or above.",
                returncode=1,
            )


def _task_plans(pattern: str | None) -> list[Any]:
    from celery_hygiene.exceptions import HygieneConfigurationError
    from celery_hygiene.ops import audit, task_plan
    from celery_hygiene.ops.checks import load_celery_app
    from celery_hygiene.task.routing import declared_queues

    app, problem = load_celery_app()
    if problem is not None:
        raise CommandError(str(problem.msg))
    try:
        specs = declared_queues(app)
    except HygieneConfigurationError:
        specs = {}  # E001 is reported by the audit below
    return task_plan.plan(app, audit.project_tasks(app, pattern), specs)


def _audit_only(pattern: str) -> list[checks.CheckMessage]:
    from celery_hygiene.ops import audit
    from celery_hygiene.ops.checks import check_settings, load_celery_app

    app, problem = load_celery_app()
    if problem is not None:
        return [problem]
    return [*check_settings(), *audit.audit(app, task_pattern=pattern)]


def _intents_line() -> str:
    """delay_on_commit's intents: what is in flight, how old, how often re-sent, given up."""
    from celery_hygiene.failures import intents

    found = intents.summary()
    oldest = "-" if found.oldest_seconds is None else f"{found.oldest_seconds:.0f} s"
    return (
        f"Enqueue intents: {found.pending} pending (oldest {oldest}), {found.resent} re-sent "
        f"(most re-sends: {found.resends}), {found.undeliverable} undeliverable dead letters."
    )


def _freshness() -> str:
    """Why the report can lag behind the workers: each process writes its statistics in batches."""
    from django.db.models import Max
    from django.utils import timezone

    from celery_hygiene import conf
    from celery_hygiene.models import TaskRunStats

    every = float(conf.get("RUN_STATS_FLUSH_SECONDS"))
    last = TaskRunStats.objects.aggregate(last=Max("updated_at"))["last"]
    when = (
        "none yet"
        if last is None
        else f"{format_utc(last)} ({(timezone.now() - last).total_seconds():.0f} s ago)"
    )
    return (
        f"Run statistics are written by each worker process every {every:g} s "
        f"(RUN_STATS_FLUSH_SECONDS) and when it exits: runs of the last {every:g} s may not be "
        f"counted yet. Last write: {when}."
    )


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:.1f}s"


def _table(rows: list[TaskDurations]) -> str:
    header = ("TASK", "RUNS", "P50", "P95", "MAX", "FLAGGED")
    lines = [
        (
            r.task_name,
            str(r.runs),
            _seconds(r.p50),
            _seconds(r.p95),
            _seconds(r.max),
            str(r.flagged),
        )
        for r in rows
    ]
    widths = [max(len(cell) for cell in column) for column in zip(header, *lines, strict=False)]
    return "\n".join(
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        )
        for line in [header, *lines]
    )


def _level_name(level: int) -> str:
    return next((name for name, value in LEVELS.items() if value == level), str(level))


def _as_dict(message: checks.CheckMessage) -> dict[str, Any]:
    return {
        "id": message.id,
        "level": _level_name(message.level),
        "msg": message.msg,
        "hint": message.hint,
        "obj": str(message.obj) if message.obj is not None else None,
    }
