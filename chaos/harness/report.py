"""The JSON report of a run: the counts per mode, the faults as they happened, the targets (met
or the misses that fail the run), the traces, and the versions and source state that ran."""

from __future__ import annotations

import argparse
import contextlib
import sys

from chaos.harness.accounting import count_modes, fetch_outcomes
from chaos.harness.constants import MODES, REPO_ROOT
from chaos.harness.database import db_call
from chaos.harness.doubles import kills_in_amortized_window
from chaos.harness.shell import run
from chaos.harness.timeline import Timeline
from chaos.harness.traces import reached_nobody, trace_problem_keys
from chaos.harness.worker_logs import execution_ends, worker_log_counts
from chaos.harness.workers import Pool


def build_report(
    args: argparse.Namespace,
    run_id: str,
    seed: int,
    timeline: Timeline,
    planned: dict[str, int],
    faults: dict,
    drained: dict,
    pool: Pool,
) -> dict:
    effects, claims, letters = db_call(fetch_outcomes)
    t0 = timeline.t0
    rel = lambda t: None if t is None else round(t - t0, 3)  # noqa: E731
    kills = timeline.kills

    keys = [f"k{i:06d}" for i in range(args.keys)]
    ends = execution_ends(pool)
    modes, doubles_detail, dl_of = count_modes(
        args, keys, effects, claims, letters, timeline, rel, ends
    )

    misses = []
    if modes["atomic"]["ran_twice_plus"]:
        misses.append(
            f"atomic mode: {modes['atomic']['ran_twice_plus']} keys ran twice or more (target 0)"
        )
    for mode in MODES:
        if modes[mode]["lost"]:
            misses.append(f"{mode} mode: {modes[mode]['lost']} keys lost (target 0)")
        stray = modes[mode]["dead_letters_total"] - sum(len(dl_of.get((mode, k), [])) for k in keys)
        if stray:
            misses.append(f"{mode} mode: {stray} dead letters that name no key of this run")
        if modes[mode]["dead_lettered"]:
            misses.append(
                f"{mode} mode: {modes[mode]['dead_lettered']} keys dead-lettered (target 0)"
            )
    if modes["plain"]["doubles_unexplained"]:
        misses.append(
            f"plain mode: {modes['plain']['doubles_unexplained']} doubles not explained by a "
            "kill between effect and completion (target 0)"
        )
    if not drained["complete"]:
        misses.append(
            "drain timed out: some keys never reached a terminal claim (counted as lost only "
            "if no effect and no dead letter)"
        )
    if faults["skipped"]:
        misses.append(f"faults not injected (run ended first): {faults['skipped']}")
    log_counts = worker_log_counts(pool, args.amortized)
    if args.amortized and not log_counts.get("amortized_completion_started"):
        misses.append("--amortized: no worker logged amortized_completion_started")

    traces = trace_problem_keys(modes, timeline, pool, rel)
    for mode in MODES:
        # A lost key none of whose messages any worker logged: lost between broker and worker.
        unseen = {t["key"] for t in traces if t["mode"] == mode and reached_nobody(t["verdict"])}
        seen = {t["key"] for t in traces if t["mode"] == mode and t["verdict"] == "received"}
        lost = set(modes[mode]["keys_by_problem"].get("lost", []))
        modes[mode]["lost_never_received"] = len((lost & unseen) - seen)
    return {
        "run_id": run_id,
        "seed": seed,
        "args": vars(args),
        "versions": versions(),
        "planned": planned,
        "published": timeline.published,
        "publish_errors": timeline.publish_errors,
        "faults": {
            "kills": len(timeline.kills),
            "kills_of_ready_workers": sum(1 for k in kills if k["ready"]),
            "worker_starts": len(timeline.worker_starts),
            "pg_restarts": [
                {
                    "at": rel(p["t"]),
                    "back_at": rel(p["end"]),
                    **({"error": p["error"]} if "error" in p else {}),
                }
                for p in timeline.pg_restarts
            ],
            "broker_cuts": [
                {
                    "at": rel(b["t"]),
                    "done_at": rel(b["end"]),
                    **({"error": b["error"]} if "error" in b else {}),
                }
                for b in timeline.broker_cuts
            ],
            "fault_phase_seconds": round(faults["chaos_seconds"], 1),
            "kill_times": [rel(k["t"]) for k in kills],
            **(
                {"kills_in_amortized_window": kills_in_amortized_window(kills, ends, timeline)}
                if args.amortized
                else {}
            ),
        },
        "drain": {k: (round(v, 1) if isinstance(v, float) else v) for k, v in drained.items()},
        "modes": modes,
        "doubles": doubles_detail,
        "targets": {"met": not misses, "misses": misses},
        "traces": traces,
        "worker_log_counts": log_counts,
        "notes": timeline.notes,
    }


def versions() -> dict:
    import celery
    import django
    import kombu
    import psycopg

    out = {
        "python": sys.version.split()[0],
        "django": django.get_version(),
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "psycopg": psycopg.__version__,
    }
    with contextlib.suppress(Exception):
        out["celery_hygiene_commit"] = run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"]
        ).stdout.strip()
    return out


def source_state() -> str | None:
    """The library the workers import: HEAD, plus a digest of uncommitted changes under src/.
    Taken at the start and the end of a run; replacement workers import the tree of their
    start, so a run whose two states differ tested more than one version."""
    import hashlib

    with contextlib.suppress(Exception):
        head = run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"]).stdout.strip()
        diff = run(["git", "-C", str(REPO_ROOT), "diff", "HEAD", "--", "src"]).stdout
        return head + (f"+dirty:{hashlib.sha1(diff.encode()).hexdigest()[:10]}" if diff else "")
    return None
