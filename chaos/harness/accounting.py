"""Counting the outcome per key and mode from what the run left in the database: every
``SideEffect`` row (a body that ran), the claims and the dead letters; ran once / twice+ /
lost / dead-lettered, with each double explained (or not) by ``doubles``."""

from __future__ import annotations

import argparse
from collections import defaultdict

from chaos.harness.cli import active_modes
from chaos.harness.constants import CONTROL, OPERATIONS, TASK_NAMES, TERMINAL
from chaos.harness.doubles import explain_double
from chaos.harness.timeline import RelativeTime, Timeline
from chaos.harness.worker_logs import ExecutionEnds


def fetch_outcomes() -> tuple[list[dict], list[dict], list[dict]]:
    """Every ``SideEffect`` row, the claims of the run's operations, and every dead letter."""
    from celery_hygiene.models import DeadLetter, TaskClaim
    from chaos.app.models import SideEffect

    effects = list(
        SideEffect.objects.order_by("created_at", "id").values(
            "key",
            "mode",
            "task_id",
            "worker_pid",
            "worker_pgid",
            "worker",
            "created_at",
            "returns_at",
        )
    )
    claims = list(
        TaskClaim.objects.filter(operation__in=OPERATIONS.values()).values(
            "entity", "operation", "status", "attempts", "completed_at", "last_error"
        )
    )
    letters = list(
        DeadLetter.objects.values(
            "entity",
            "operation",
            "task_name",
            "reason",
            "exception_type",
            "exception_message",
            "attempts",
        )
    )
    return effects, claims, letters


def count_modes(
    args: argparse.Namespace,
    keys: list[str],
    effects: list[dict],
    claims: list[dict],
    letters: list[dict],
    timeline: Timeline,
    rel: RelativeTime,
    ends: ExecutionEnds,
) -> tuple[dict[str, dict], list[dict], dict[tuple[str, str], list[dict]]]:
    """Per mode, the counts of the report's table and the keys behind each problem; the
    explanation of every double; and the dead letters per (mode, key)."""
    kills = timeline.kills
    op_mode = {op: mode for mode, op in OPERATIONS.items()}
    name_mode = {name: mode for mode, name in TASK_NAMES.items()}

    per_key: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for e in effects:
        per_key[(e["mode"], e["key"])].append(e)
    claim_of = {(op_mode[c["operation"]], c["entity"]): c for c in claims}
    dl_of: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for d in letters:
        mode = op_mode.get(d["operation"]) or name_mode.get(d["task_name"], "?")
        dl_of[(mode, d["entity"])].append(d)

    modes: dict[str, dict] = {}
    doubles_detail: list[dict] = []
    for mode in active_modes(args):
        stats = defaultdict(int)
        lists: dict[str, list[str]] = defaultdict(list)
        for key in keys:
            runs = per_key.get((mode, key), [])
            claim = claim_of.get((mode, key))
            dead = dl_of.get((mode, key), [])
            n = len(runs)
            if dead:
                stats["dead_lettered"] += 1
                if n:
                    stats["dead_lettered_with_effect"] += 1
            if dead:
                lists["dead_lettered"].append(key)
            if n == 0 and not dead:
                stats["lost"] += 1
                lists["lost"].append(key)
            elif n == 1:
                stats["ran_once"] += 1
            elif n >= 2:
                stats["ran_twice_plus"] += 1
                stats["extra_runs"] += n - 1
            if mode == CONTROL:
                pass  # no claim, by design
            elif claim is None:
                stats["no_claim_row"] += 1
            elif claim["status"] not in TERMINAL:
                stats["claim_not_terminal"] += 1
                lists["claim_not_terminal"].append(f"{key}:{claim['status']}:{claim['attempts']}")
            if n >= 2:
                detail = explain_double(
                    mode, key, runs, claim, kills, timeline, rel, ends, args.amortized
                )
                doubles_detail.append(detail)
                stats["doubles_explained" if detail["explained"] else "doubles_unexplained"] += 1
                if detail.get("lost_commit_reply"):
                    stats["doubles_explained_lost_commit_reply"] += 1
                if detail.get("amortized_window"):
                    stats["doubles_explained_amortized_window"] += 1
                if detail.get("amortized_window_extended_by_pg_restart"):
                    stats["doubles_explained_amortized_window_pg_extended"] += 1
        stats["keys"] = len(keys)
        stats["effect_rows"] = sum(len(per_key.get((mode, k), [])) for k in keys)
        modes[mode] = {
            k: stats.get(k, 0)
            for k in (
                "keys",
                "ran_once",
                "ran_twice_plus",
                "extra_runs",
                "lost",
                "dead_lettered",
                "dead_lettered_with_effect",
                "doubles_explained",
                "doubles_unexplained",
                # A subset of doubles_explained: no kill; the body's write committed and its
                # reply was lost in the PostgreSQL restart (the body raised and was retried).
                "doubles_explained_lost_commit_reply",
                "claim_not_terminal",
                "no_claim_row",
                "effect_rows",
            )
        }
        if args.amortized:
            # A subset of doubles_explained: the kill fell after the run's "succeeded" line.
            for k in (
                "doubles_explained_amortized_window",
                "doubles_explained_amortized_window_pg_extended",
            ):
                modes[mode][k] = stats.get(k, 0)
        reasons = defaultdict(int)
        for key in keys:
            for d in dl_of.get((mode, key), []):
                reasons[f"{d['reason']}:{d['exception_type']}"] += 1
        modes[mode]["dead_letter_reasons"] = dict(reasons)
        # Dead letters of this mode's task that name no key of the run (e.g. no entity at all).
        modes[mode]["dead_letters_total"] = sum(
            1
            for d in letters
            if d["operation"] == OPERATIONS.get(mode) or d["task_name"] == TASK_NAMES.get(mode)
        )
        modes[mode]["keys_by_problem"] = {k: v[:200] for k, v in lists.items()}
    return modes, doubles_detail, dl_of
