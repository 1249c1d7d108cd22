"""Explaining doubles: for a key whose body ran more than once, which kill (if any) caught the
earlier run between its effect and its completion, and, with ``--amortized``, the window after
the run's "succeeded" line in which its completion still waited for its batch."""

from __future__ import annotations

from chaos.harness.timeline import RelativeTime, Timeline, epoch
from chaos.harness.worker_logs import ExecutionEnds

# --amortized: a kill of the worker at most this long after its "succeeded" line for a run
# explains a double (the batch with that run's completion may not have committed yet). The
# writer thread records a batch as soon as the pipe has data: milliseconds, unless PostgreSQL
# refuses it (then it retries with back-off up to DB_RETRY_MAX_WAIT, see AMORTIZED_PG_EXTRA).
AMORTIZED_WINDOW = 2.0
# ... and a PostgreSQL restart overlapping that window extends it to the restart's end plus
# the writer's longest retry wait (DB_RETRY_MAX_WAIT, 5 s by default) plus AMORTIZED_WINDOW.
AMORTIZED_PG_EXTRA = 5.0


def amortized_deadline(succeeded_at: float, timeline: Timeline) -> tuple[float, bool]:
    """Until when a completion whose run was logged as succeeded at ``succeeded_at`` may still
    have been waiting for its batch: AMORTIZED_WINDOW, or, when a PostgreSQL restart overlaps
    that window, the end of the restart plus the writer's longest retry wait plus the window."""
    deadline = succeeded_at + AMORTIZED_WINDOW
    extended = False
    for p in timeline.pg_restarts:
        if p["t"] <= deadline and p["end"] >= succeeded_at:
            deadline = max(deadline, p["end"] + AMORTIZED_PG_EXTRA + AMORTIZED_WINDOW)
            extended = True
    return deadline, extended


def kills_in_amortized_window(
    kills: list[dict], ends: ExecutionEnds, timeline: Timeline
) -> dict[str, int]:
    """--amortized: how many kills fell within the window after some "succeeded" line of the
    worker they killed, whether or not a double followed: an upper bound on the kills that can
    have caught a completion waiting for its batch (a busy worker logs a success every few
    hundred ms, so most kills qualify). Within 50 ms is where a waiting batch is plausible."""
    hit = extended = close = 0
    for k in kills:
        stamps = [
            t for per in ends.get(k["pgid"], {}).values() for t, how in per if how == "succeeded"
        ]
        if any(t - 0.002 <= k["t"] <= t + 0.05 for t in stamps):
            close += 1
        if any(t - 0.002 <= k["t"] <= t + AMORTIZED_WINDOW for t in stamps):
            hit += 1
        elif any(t - 0.002 <= k["t"] <= amortized_deadline(t, timeline)[0] for t in stamps):
            extended += 1
    return {
        "within_50ms": close,
        "within_window": hit,
        "within_window_extended_by_pg_restart": extended,
    }


def explain_double(
    mode: str,
    key: str,
    runs: list[dict],
    claim: dict | None,
    kills: list[dict],
    timeline: Timeline,
    rel: RelativeTime,
    ends: ExecutionEnds,
    amortized: bool = False,
) -> dict:
    """Which kills could have caused each extra run of this key.

    Run i's effect is followed by run i+1 only if run i never recorded its completion. A kill
    "explains" that if it SIGKILLed the worker that wrote run i's effect (same process group)
    after the effect, before run i+1 started, and while run i was still executing: that
    worker's log shows no end of run i's task (Celery's "succeeded" / "raised" / "retry" line)
    after the effect. The kills of any worker in that window are reported too, to show how
    crowded the window was.

    With ``amortized`` (AMORTIZED_COMPLETION), a run logged as "succeeded" has only handed its
    completion to the worker's main process; the batch holding it commits a little later. A
    kill of that worker after the "succeeded" line, before run i+1 started and at most
    AMORTIZED_WINDOW after the line (longer when a PostgreSQL restart overlaps, see
    amortized_deadline) explains the extra run too: the "amortized window", counted apart.
    """
    completed = epoch(claim["completed_at"]) if claim else None
    gaps = []
    explained = True
    for i, run_ in enumerate(runs):
        start = epoch(run_["created_at"])
        end = epoch(runs[i + 1]["created_at"]) if i + 1 < len(runs) else completed
        if i + 1 == len(runs):
            break
        finished = [
            (t, how)
            for t, how in ends.get(run_["worker_pgid"], {}).get(run_["task_id"], [])
            if t >= start - 0.002  # log stamps are truncated to the millisecond
        ]
        finished_at, ended_how = min(finished) if finished else (None, None)
        own = [
            k
            for k in kills
            if k["pgid"] == run_["worker_pgid"]
            and start <= k["t"] <= end
            and (finished_at is None or k["t"] < finished_at)
        ]
        any_ = [k for k in kills if start <= k["t"] <= end]
        returns = epoch(run_["returns_at"])
        where = None
        if own:
            where = "mid-body" if own[0]["t"] < returns else "after body, before completion"
        window: dict = {}
        if amortized and not own and finished_at is not None and ended_how == "succeeded":
            deadline, extended = amortized_deadline(finished_at, timeline)
            late = [
                k
                for k in kills
                if k["pgid"] == run_["worker_pgid"]
                and start <= k["t"] <= end
                and finished_at - 0.002 <= k["t"] <= deadline
            ]
            if late:
                own = late
                where = "amortized window, after the succeeded line"
                window = {
                    "amortized_window": True,
                    "kill_after_succeeded_s": round(late[0]["t"] - finished_at, 3),
                    "window_extended_by_pg_restart": extended
                    and late[0]["t"] > finished_at + AMORTIZED_WINDOW,
                }
        ended_in_restart = finished_at is not None and any(
            p["t"] <= finished_at <= p["end"] for p in timeline.pg_restarts
        )
        if not own and ended_how == "retry" and ended_in_restart:
            # No kill: the body's own write committed, but PostgreSQL went down before its reply
            # reached the body, which raised and was retried (at-least-once for a body that
            # fails after its effect; atomic mode rolls such a write back). Counted apart.
            window = {**window, "lost_commit_reply": True}
            where = "no kill: its write's commit reply was lost in the PostgreSQL restart"
        pg = [p for p in timeline.pg_restarts if p["t"] <= end and p["end"] >= start]
        cuts = [b for b in timeline.broker_cuts if start <= b["t"] <= end]
        gaps.append(
            {
                "effect_at": rel(start),
                "body_returns_at": rel(returns),
                "next_effect_at": rel(end),
                "worker": run_["worker"],
                "worker_pgid": run_["worker_pgid"],
                "run_ended_at": rel(finished_at),
                "run_ended_how": ended_how,
                # The run ended (e.g. raised and was retried) while PostgreSQL was restarting:
                # its effect may have committed with the reply lost (not a kill; diagnostic).
                "run_ended_in_pg_restart": ended_in_restart,
                "kills_of_that_worker": len(own),
                "kill_at": rel(own[0]["t"]) if own else None,
                "kill_fell": where,
                "kills_of_any_worker": len(any_),
                "pg_restart_in_window": bool(pg),
                "broker_cut_in_window": bool(cuts),
                **window,
            }
        )
        if not own and not window.get("lost_commit_reply"):
            explained = False
    out = {
        "mode": mode,
        "key": key,
        "runs": len(runs),
        "claim_status": claim["status"] if claim else None,
        "claim_attempts": claim["attempts"] if claim else None,
        "explained": explained,
        "gaps": gaps,
        "lost_commit_reply": explained and any(g.get("lost_commit_reply") for g in gaps),
    }
    if amortized:
        out["amortized_window"] = explained and any(g.get("amortized_window") for g in gaps)
        out["amortized_window_extended_by_pg_restart"] = out["amortized_window"] and any(
            g.get("window_extended_by_pg_restart") for g in gaps
        )
    return out
