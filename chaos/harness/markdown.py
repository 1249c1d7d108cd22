"""The table printed at the end of a run: one row per mode (ran once, twice+, explained, lost,
dead-lettered), the doubles with their kills, the traces of lost keys, and the targets."""

from __future__ import annotations

from chaos.harness.constants import CONTROL, MODES
from chaos.harness.doubles import AMORTIZED_WINDOW


def lost_cell(m: dict) -> str:
    unseen = m.get("lost_never_received", 0)
    return f"{m['lost']} ({unseen} never reached a worker)" if unseen else str(m["lost"])


def render_markdown(report: dict) -> str:
    a, f, plan, drain_ = report["args"], report["faults"], report["planned"], report["drain"]
    via = " via PgBouncer" if a["pgbouncer"] else ""
    restarts = [p["at"] for p in f["pg_restarts"]]
    cuts = [b["at"] for b in f["broker_cuts"]]
    drained = "complete" if drain_["complete"] else "TIMED OUT"
    amortized = bool(a.get("amortized"))
    mode_note = ", **amortized completion**" if amortized else ""
    lines = [
        "",
        f"## celery-hygiene fault-injection run {report['run_id']}",
        "",
        f"broker **{a['broker']}**{via}{mode_note}, "
        f"{a['keys']} keys x {len(report['modes'])} modes, "
        f"{plan['duplicates']} duplicates ({plan['delayed_duplicates']} delayed), "
        f"{a['workers']} workers x -c {a['concurrency']}, lease {a['lease_seconds']} s, "
        f"seed {report['seed']}",
        f"faults: {f['kills']} SIGKILLs ({f['kills_of_ready_workers']} of ready workers) in "
        f"{f['fault_phase_seconds']} s, PostgreSQL restarts at {restarts} s, broker cuts at "
        f"{cuts} s; drain {drain_['seconds']} s ({drained}, {drain_['rotations']} worker "
        f"rotations); publish retries {report['publish_errors']}",
    ]
    if amortized:
        w = f.get("kills_in_amortized_window", {})
        lines.append(
            f"amortized completion: {w.get('within_window', 0)} kills fell within "
            f"{AMORTIZED_WINDOW:g} s ({w.get('within_50ms', 0)} within 50 ms) after a "
            "'succeeded' line of the worker they killed"
            + (
                f" (+{w['within_window_extended_by_pg_restart']} within the window extended "
                "by the PostgreSQL restart)"
                if w.get("within_window_extended_by_pg_restart")
                else ""
            )
        )
    amortized_col = " of which amortized window |" if amortized else ""
    lines += [
        "",
        "| mode | keys | ran once | ran twice+ | explained by a kill |"
        + amortized_col
        + " unexplained | lost | dead-lettered | claim not terminal |",
        "| --- | ---: | ---: | ---: | ---: |"
        + (" ---: |" if amortized else "")
        + " ---: | ---: | ---: | ---: |",
    ]
    for mode in report["modes"]:
        m = report["modes"][mode]
        unfinished = m["claim_not_terminal"] + m["no_claim_row"]
        window_cell = ""
        if amortized:
            window_cell = f" {m.get('doubles_explained_amortized_window', 0)}"
            if m.get("doubles_explained_amortized_window_pg_extended"):
                window_cell += (
                    f" ({m['doubles_explained_amortized_window_pg_extended']} extended by the "
                    "PostgreSQL restart)"
                )
            window_cell += " |"
        lines.append(
            f"| {mode} | {m['keys']} | {m['ran_once']} | {m['ran_twice_plus']} | "
            f"{m['doubles_explained']} |{window_cell} {m['doubles_unexplained']} | "
            f"{lost_cell(m)} | {m['dead_lettered']} | {unfinished} |"
        )
    for mode in report["modes"]:
        lost_reply = report["modes"][mode].get("doubles_explained_lost_commit_reply", 0)
        if lost_reply:
            lines.append(
                f"\n{mode}: {lost_reply} of the explained doubles had no kill: the body's own "
                "write committed while PostgreSQL went down, its reply never reached the body, "
                "which raised and was retried (the run ended in `retry` during the restart)."
            )
    doubles = report["doubles"]
    shown = [d for d in doubles if d["mode"] != CONTROL]
    if shown:
        lines += [
            "",
            "Doubles. Per extra run, between the earlier effect and the next run: kills of "
            "the worker that wrote the effect while that run was still executing / kills of "
            "any worker:",
            "",
        ]
        for d in shown[:40]:
            parts = []
            for g in d["gaps"]:
                extra = []
                if g["pg_restart_in_window"]:
                    extra.append("pg restart")
                if g["broker_cut_in_window"]:
                    extra.append("broker cut")
                if g.get("window_extended_by_pg_restart"):
                    extra.append("window extended by the pg restart")
                parts.append(
                    f"effect {g['effect_at']} s -> next {g['next_effect_at']} s: "
                    f"{g['kills_of_that_worker']}/{g['kills_of_any_worker']} kills"
                    + (
                        f" ({g['kill_fell']} at {g['kill_at']} s)"
                        if g["kill_fell"] and g["kill_at"] is not None
                        else f" ({g['kill_fell']})"
                        if g["kill_fell"]
                        else ""
                    )
                    + (
                        f" (+{g['kill_after_succeeded_s']} s after the succeeded line)"
                        if g.get("amortized_window")
                        else ""
                    )
                    + (
                        f" (that run ended at {g['run_ended_at']} s: {g.get('run_ended_how')}"
                        + (", during the pg restart" if g.get("run_ended_in_pg_restart") else "")
                        + ")"
                        if g["run_ended_at"]
                        else ""
                    )
                    + (f" [{', '.join(extra)}]" if extra else "")
                )
            lines.append(
                f"- {d['mode']} {d['key']} x{d['runs']} "
                f"({'explained' if d['explained'] else 'UNEXPLAINED'}): " + "; ".join(parts)
            )
        if len(shown) > 40:
            lines.append(f"- ... {len(shown) - 40} more in the JSON report")
    for mode in MODES:
        if report["modes"][mode]["dead_letter_reasons"]:
            lines.append(f"\n{mode} dead letters: {report['modes'][mode]['dead_letter_reasons']}")
    for t in report.get("traces", [])[:20]:
        lines.append(
            f"\ntrace {t['mode']} {t['key']} message {t['task_id']} (published at "
            f"{t['published_at']} s): {t['verdict']}, received {t['received']} time(s)"
        )
        if "neighbours_received_between" in t:
            lines.append(
                f"    neighbours in publish order reached workers between "
                f"{t['neighbours_received_between']} s; kills then: {t['kills_in_that_window']}"
                + ("; broker cut then" if t["broker_cut_in_that_window"] else "")
            )
        lines += [f"    {line}" for line in t["log"][-4:]]
    seen = {k: v for k, v in report.get("worker_log_counts", {}).items() if v}
    lines += ["", f"worker logs: {seen}"]
    v = report.get("versions", {})
    if v.get("source_at_start") != v.get("source_at_end"):
        lines += [
            "",
            f"NOTE: the library changed during the run ({v.get('source_at_start')} -> "
            f"{v.get('source_at_end')}); workers started later ran the newer code",
        ]
    lines += ["", "Targets: " + ("all met" if report["targets"]["met"] else "MISSED")]
    lines += [f"- {m}" for m in report["targets"]["misses"]]
    return "\n".join(lines) + "\n"
