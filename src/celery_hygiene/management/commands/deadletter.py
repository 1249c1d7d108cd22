"""``manage.py deadletter summary|list|show|replay|discard|recover|purge``: dead letters for
on-call.

Bad input (unknown id, unknown task, malformed duration, undeclared queue) raises
``CommandError`` before anything is changed. Payloads are printed redacted
(``CELERY_HYGIENE["REDACT_KEYS"]``); replays send the stored, real values. Every time is printed
in UTC and every date typed is read in UTC. Replay, discard and recover leave an admin History
entry naming who ran them (``--by``, default the OS user).

Django's system checks are not run first (they print the whole hygiene audit before every
command); replay loads the Celery app's task modules itself.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import QuerySet
from django.utils import timezone

from celery_hygiene import conf
from celery_hygiene.failures import history
from celery_hygiene.failures.deadletters import format_utc
from celery_hygiene.failures.durations import duration_option
from celery_hygiene.failures.replay import (
    Outcome,
    ReplayResult,
    celery_app,
    discard,
    load_task_modules,
    paced,
    pending_ids,
    queue_refusal,
    refusal,
    replay,
    replay_outcome,
)
from celery_hygiene.failures.retention import purge_dead_letters
from celery_hygiene.failures.selection import Selection
from celery_hygiene.models import DeadLetter, DeadLetterStatus
from celery_hygiene.ops.deadletter_args import REASONS as REASONS
from celery_hygiene.ops.deadletter_args import STATUSES as STATUSES
from celery_hygiene.ops.deadletter_args import (
    add_subcommands,
    check_task,
    chunks,
    get_many,
    get_one,
    parse_since,
)
from celery_hygiene.ops.deadletter_output import (
    as_dict,
    capped_count,
    format_detail,
    format_summary,
    format_table,
    replay_note,
)
from celery_hygiene.ops.report import incident_summary

# Retention never deletes a row whose replay is in flight.
PURGEABLE = (DeadLetterStatus.REPLAYED, DeadLetterStatus.DISCARDED)


class Command(BaseCommand):
    help = "Inspect, replay, discard and purge dead-lettered Celery tasks. Times are UTC."
    # The system checks print the whole hygiene audit before every command; an operator at 3 a.m.
    # wants the dead letters. `manage.py check` / `taskhygiene check` run them.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        add_subcommands(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        self.verbosity = int(options.get("verbosity", 1))
        handler = getattr(self, f"handle_{options['subcommand']}")
        handler(options)

    # -- list / show -------------------------------------------------------------------------

    def handle_list(self, options: dict[str, Any]) -> None:
        selection = self._selection(
            options, statuses=(options["status"],) if options["status"] else ()
        )
        if options["limit"] < 0:
            raise CommandError("--limit must be 0 (no limit) or more")
        queryset: QuerySet[DeadLetter] = selection.queryset()
        limit = options["limit"]
        rows = list(queryset[: limit + 1] if limit else queryset)
        more = bool(limit) and len(rows) > limit
        rows = rows[:limit] if limit else rows
        if options["json"]:
            self.stdout.write(json.dumps([as_dict(row) for row in rows], indent=2))
        else:
            self.stdout.write(format_table(rows))
        if more:
            # On stderr, so `--json | jq` still reads one array.
            total = capped_count(queryset)
            self.stderr.write(
                f"showing the newest {limit} of {total} matching dead letters; "
                "--limit 0 shows all, or narrow with --since/--task/--exception/--status"
            )

    def handle_show(self, options: dict[str, Any]) -> None:
        dead_letter = get_one(options["id"])
        data = as_dict(dead_letter, full=True)
        if dead_letter.replayed_task_id:
            outcome = replay_outcome(dead_letter)
            data["replay_outcome"] = outcome.state.value
            data["replay_outcome_text"] = outcome.text
            data["replayed_again_as"] = outcome.dead_letter.pk if outcome.dead_letter else None
        if options["json"]:
            self.stdout.write(json.dumps(data, indent=2))
            return
        self.stdout.write(format_detail(dead_letter, data))

    def handle_summary(self, options: dict[str, Any]) -> None:
        since = parse_since(options["since"])
        groups = incident_summary(since=since)
        if options["json"]:
            self.stdout.write(json.dumps([group.as_json() for group in groups], indent=2))
            return
        self.stdout.write(format_summary(groups, since))

    # -- replay ------------------------------------------------------------------------------

    def handle_replay(self, options: dict[str, Any]) -> None:
        rate = options["rate"] if options["rate"] is not None else float(conf.get("REPLAY_RATE"))
        if rate <= 0:
            raise CommandError(f"--rate must be greater than 0 (got {rate:g})")
        app = celery_app()
        load_task_modules(app)
        unknown_queue = "" if options["force"] else queue_refusal(app, options["queue"])
        if unknown_queue:
            raise CommandError(f"nothing replayed: {unknown_queue}")
        ids, total = self._targets(options)
        if options["ids"]:
            # Named ids are all-or-nothing: any refusal stops the command before a single publish.
            refusals = [
                r
                for r in (
                    refusal(dl, app, force=options["force"], queue=options["queue"])
                    for dl in get_many(ids)
                )
                if r
            ]
            if refusals:
                raise CommandError(
                    "nothing replayed:\n  " + "\n  ".join(r.message for r in refusals)
                )
        if options["dry_run"]:
            self._dry_run_replay(ids, total, app, options)
            return
        actor = history.cli_actor(options["by"])
        failed = 0
        for index, pk in enumerate(paced(ids, rate), start=1):
            result = replay(pk, queue=options["queue"], force=options["force"], app=app)
            failed += not result.ok
            if result.ok:
                history.record(actor, "replay", {pk: replay_note(result, options["queue"])})
            self._progress(index, total, result)
        self._finish("replayed", total, failed)

    def _dry_run_replay(
        self, ids: Iterable[int], total: int, app: Any, options: dict[str, Any]
    ) -> None:
        would = 0
        for dead_letter in get_many(ids):
            refused = refusal(dead_letter, app, force=options["force"], queue=options["queue"])
            if refused:
                self.stdout.write(f"would skip {dead_letter.pk}: {refused.message}")
                continue
            would += 1
            target = options["queue"] or dead_letter.queue or "(default queue)"
            self.stdout.write(f"would replay {dead_letter.pk} {dead_letter.task_name} -> {target}")
        self.stdout.write(f"dry run: {would} of {total} would be replayed; nothing was changed")

    def _progress(self, index: int, total: int, result: ReplayResult) -> None:
        if result.ok and self.verbosity < 1:
            return
        if result.ok:
            line = f"[{index}/{total}] replayed {result.dead_letter_id} as task {result.task_id}"
            if result.outcome is Outcome.SCHEDULED:
                line += " (sent when the surrounding transaction commits)"
            if result.message:
                line += f"; note: {result.message}"
            self.stdout.write(line)
        else:
            self.stderr.write(
                f"[{index}/{total}] not replayed {result.dead_letter_id}: {result.message}"
            )

    def _finish(self, verb: str, total: int, failed: int) -> None:
        if failed:
            raise CommandError(f"{failed} of {total} dead letters were not {verb} (see above)")
        if self.verbosity >= 1:
            self.stdout.write(f"{verb} {total} dead letter{'s' if total != 1 else ''}")

    # -- discard -----------------------------------------------------------------------------

    def handle_discard(self, options: dict[str, Any]) -> None:
        ids, total = self._targets(options)
        if options["ids"]:
            not_pending = [dl for dl in get_many(ids) if dl.status != DeadLetterStatus.PENDING]
            if not_pending:
                raise CommandError(
                    "nothing discarded; only pending dead letters can be discarded: "
                    + ", ".join(f"{dl.pk} is {dl.status}" for dl in not_pending)
                )
        if options["dry_run"]:
            self.stdout.write(f"dry run: {total} would be discarded; nothing was changed")
            return
        actor = history.cli_actor(options["by"])
        done = 0
        for chunk in chunks(ids, 500):
            # Status guard: a row replayed meanwhile by someone else stays replayed.
            changed = discard(chunk)
            history.record(actor, "discard", dict.fromkeys(changed, "marked handled, not replayed"))
            done += len(changed)
            if self.verbosity >= 1 and total > 500:
                self.stdout.write(f"[{done}/{total}] discarded")
        self._finish("discarded", total, total - done)

    # -- recover / purge ---------------------------------------------------------------------

    def handle_recover(self, options: dict[str, Any]) -> None:
        from celery_hygiene.failures.replay import RecoverError, recover

        actor = history.cli_actor(options["by"])
        failures = 0
        for pk in dict.fromkeys(options["ids"]):
            try:
                done = recover(pk, force=options["force"])
                history.record(actor, "recover", {pk: done})
                self.stdout.write(done)
            except RecoverError as exc:
                failures += 1
                self.stderr.write(str(exc))
        if failures:
            raise CommandError(f"{failures} dead letter(s) not recovered")

    def handle_purge(self, options: dict[str, Any]) -> None:
        age = duration_option(options["older_than"], "--older-than")
        if options["batch_size"] <= 0:
            raise CommandError("--batch-size must be greater than 0")
        statuses = (
            [*PURGEABLE, DeadLetterStatus.PENDING] if options["include_pending"] else PURGEABLE
        )
        cutoff = timezone.now() - age
        # order_by() drops the default ordering: batches need no sort, just bounded size.
        old = DeadLetter.objects.filter(status__in=statuses, last_failed_at__lt=cutoff).order_by()
        if options["dry_run"]:
            self.stdout.write(
                f"dry run: {old.count()} dead letters that last failed before "
                f"{format_utc(cutoff)} would be purged"
            )
            return

        def progress(done: int) -> None:
            if self.verbosity >= 2:
                self.stdout.write(f"purged {done} so far")

        # One short transaction per batch: locks are held for one batch, never the whole purge.
        purged = purge_dead_letters(
            older_than=age, statuses=statuses, batch_size=options["batch_size"], on_batch=progress
        )
        self.stdout.write(
            f"purged {purged} dead letters that last failed before {format_utc(cutoff)}"
        )

    # -- shared ------------------------------------------------------------------------------

    def _selection(self, options: dict[str, Any], statuses: tuple[str, ...] = ()) -> Selection:
        task = options.get("task")
        if task:
            check_task(task)
        since = options.get("since")
        return Selection(
            task=task,
            statuses=statuses,
            exception=options.get("exception"),
            since=parse_since(since) if since else None,
            entity=options.get("entity"),
            reason=options.get("reason"),
        )

    def _targets(self, options: dict[str, Any]) -> tuple[Iterable[int], int]:
        """Ids named on the command line (all must exist), or every pending row of a filter."""
        ids: list[int] = options["ids"]
        has_filter = any(
            options.get(name) for name in ("task", "since", "exception", "entity", "reason")
        )
        if ids and (has_filter or options["all"]):
            raise CommandError(
                "give either dead-letter ids or a filter "
                "(--task/--since/--exception/--entity/--reason/--all), not both"
            )
        if ids:
            get_many(ids)  # unknown ids fail here, before anything changes
            return list(dict.fromkeys(ids)), len(set(ids))
        if not has_filter and not options["all"]:
            raise CommandError(
                "say which dead letters: ids, a filter (--task, --since, --exception, --entity, "
                "--reason), or --all"
            )
        selection = self._selection(options)
        total = selection.queryset().filter(status=DeadLetterStatus.PENDING).count()
        return pending_ids(selection), total
