"""The Markdown report of a run: one section per phase (floor, throughput per body, low-load
cost, round trips, amortized batches, scale and retention, admin) and the table of targets."""

from __future__ import annotations

import statistics

from harness.config import ARGS
from harness.floor import FLOOR_VARIANTS
from harness.measures import overhead, stats
from harness.variants import (
    AMORTIZED_TARGETS,
    BODIES,
    FLOOR_TARGET,
    MEASURED_AGAINST_TARGETS,
    TARGETS,
    VARIANTS,
)

# (target, measured, met); met is None when it was not measured.
Targets = list[tuple[str, str, bool | None]]


def report(results: dict) -> str:
    """The whole report: the machine and worker, one section per phase that ran, the targets."""
    lines = header_section(results)
    targets: Targets = []
    floor_section(results, lines, targets)
    throughput_section(results, lines, targets)
    latency_section(results, lines, targets)
    round_trips_section(results, lines, targets)
    amortized_batches_section(results, lines)
    scale_section(results, lines, targets)
    lines += ["### Targets", "", "| target | measured | met |", "|---|---|---|"]
    for name, value, ok in targets:
        lines.append(
            f"| {name} | {value} | {'yes' if ok else ('n/a' if ok is None else '**no**')} |"
        )
    return "\n".join(lines) + "\n"


def header_section(results: dict) -> list[str]:
    """When, on what machine and versions, with which worker command line."""
    m = results["machine"]
    lines = [
        f"Run {m['date']}: `{m['command']}`",
        "",
        f"Machine: {m['nproc']} cores ({m['cpu']}); Python {m['python']}, PostgreSQL "
        f"{m['postgresql']}, RabbitMQ {m['rabbitmq']}, Celery {m['celery']}, Django "
        f"{m['django']}, celery-once {m['celery_once']}. celery-hygiene at {m['library']}.",
        "",
        "```",
        m["free"],
        "```",
        "",
        f"Worker: `celery worker -P prefork -c {ARGS.concurrency}`, prefetch multiplier 4, "
        f"acks early, no result backend, "
        f"{'a new DB connection per task (Celery default)' if ARGS.db_per_task else 'DB connection kept across tasks (CELERY_DB_REUSE_MAX)'}, "
        f"synchronous_commit={ARGS.synchronous_commit}; bodies below.",
        "",
    ]
    return lines


def floor_section(results: dict, lines: list[str], targets: Targets) -> None:
    """Phase 0: per claim + completion in one process, ratios to the raw statements."""
    fl = results.get("floor")
    if fl:
        lines += [
            f"### Floor: per claim + completion, in one process, no broker ({ARGS.floor_rounds} "
            f"rounds x {ARGS.floor_n} fresh keys per variant, alternated)",
            "",
            "| path | wall per claim (ms, median) | client CPU (ms) | ratio to raw (median of "
            "rounds) | per-round ratios |",
            "|---|---|---|---|---|",
        ]
        for name, label in FLOOR_VARIANTS.items():
            if name not in fl:
                continue
            row = fl[name]
            lines.append(
                f"| {label} | {row['wall_ms']:.3f} | {row['cpu_ms']:.3f} | {row['ratio']:.2f}x | "
                f"{', '.join(f'{x:.2f}' for x in row['per_round'])} |"
            )
        if fl.get("hot_updates"):
            upd, hot = fl["hot_updates"]
            lines += ["", f"HOT updates of the claim table in this phase: {hot:,} of {upd:,}."]
        lines.append("")
        targets.append(
            (
                f"decorator overhead in-process <= {FLOOR_TARGET:.2f} x raw two-statement floor",
                f"{fl['decorator']['ratio']:.2f}x (prepared: "
                f"{fl['decorator_prepared']['ratio']:.2f}x)",
                fl["decorator"]["ratio"] <= FLOOR_TARGET,
            )
        )


def throughput_section(results: dict, lines: list[str], targets: Targets) -> None:
    """Phase 1: tasks/s per body, variant and worker, ratios to (a) of the same round."""
    runs = results.get("throughput", [])
    if runs:
        groups: dict[tuple[str, str, str], list[dict]] = {}
        for r in runs:
            groups.setdefault(
                (r.get("body", "micro"), r["variant"], r.get("worker", "now")), []
            ).append(r)
        for body in BODIES:
            base_runs = groups.get((body, "a", "now"), [])
            if not any(k[0] == body for k in groups):
                continue
            base_by_round = {r["round"]: r["tasks_per_s"] for r in base_runs}
            n = ARGS.real_tasks if body == "realistic" else ARGS.tasks
            what = (
                f"five small queries + {ARGS.real_work_ms:g} ms sleep"
                if body == "realistic"
                else f"one INSERT + {ARGS.work_ms:g} ms sleep"
            )
            lines += [
                f"### Throughput, {body} body ({what}): N = {n:,} messages per run, "
                f"{ARGS.rounds} round(s), runs alternated",
                "",
                "| variant | worker | tasks/s (median) | runs | ratio to (a) (median of rounds) | "
                "per-round ratios | worker overhead median / p99 (ms) | publish msg/s | body runs |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
            for (b, v, kind), rs in groups.items():
                if b != body:
                    continue
                med = statistics.median(r["tasks_per_s"] for r in rs)
                per_round = [
                    r["tasks_per_s"] / base_by_round[r["round"]]
                    for r in rs
                    if r["round"] in base_by_round
                ]
                ratio = statistics.median(per_round) if per_round else None
                samples = [x for r in rs for x in r["samples"]]
                ov = stats(t - bb for _, t, bb in samples)
                pub = statistics.median(r["publish_per_s"] for r in rs)
                eff = rs[0]["expected_effects"]
                who = {
                    "now": "this tree",
                    "before": f"before ({ARGS.before_ref})",
                    "prepared": "this tree, prepared",
                    "async": "this tree, ASYNC_COMPLETION",
                    "amortized": "this tree, AMORTIZED_COMPLETION",
                    "nocomplete": "this tree, completion skipped (upper bound of amortizing it)",
                }[kind]
                lines.append(
                    f"| ({v}) {VARIANTS[v][0]} | {who} | {med:,.0f} | "
                    f"{', '.join(format(r['tasks_per_s'], ',.0f') for r in rs)} | "
                    f"{format(ratio, '.2f') + 'x' if ratio else '-'} | "
                    f"{', '.join(f'{x:.2f}' for x in per_round)} | "
                    f"{ov['median_ms']:.2f} / {ov['p99_ms']:.2f} | {pub:,.0f} | "
                    f"{eff:,} / {rs[0]['messages']:,} |"
                )
                goal = (AMORTIZED_TARGETS if kind == "amortized" else TARGETS).get((body, v))
                if goal is not None and ratio is not None and kind in MEASURED_AGAINST_TARGETS:
                    targets.append(
                        (
                            f"{body}: ({v}) >= {goal:.2f} x (a)"
                            + (f" [{kind}]" if kind != "now" else ""),
                            f"{ratio:.2f}x",
                            ratio >= goal,
                        )
                    )
            lines.append("")
        deferred = sum(r["deferred"] for r in runs)
        lines += [f"Deferred (busy-claim) re-publishes across all runs: {deferred}.", ""]


def latency_section(results: dict, lines: list[str], targets: Targets) -> None:
    """Phase 2: the worker-side cost per task at low load, and (b)'s under full load."""
    runs = results.get("throughput", [])
    lat = results.get("latency")
    if lat:
        lines += [
            f"### Worker-side cost at low load ({ARGS.latency_tasks:,} tasks per variant, "
            f"{ARGS.latency_rate:g} msg/s, interleaved)",
            "",
            "Time from `task_prerun` to `task_postrun` minus the body's own time: what the "
            "decorator adds (claim + complete for hygiene; lock release for celery-once).",
            "",
            "| variant | overhead median (ms) | p99 (ms) | body median (ms) |",
            "|---|---|---|---|",
        ]
        for v in results["latency_variants"]:
            name = VARIANTS[v][1]
            ov = overhead(lat["samples"], name)
            body = stats(b for n, _, b in lat["samples"] if n == name)
            lines.append(
                f"| ({v}) {VARIANTS[v][0]} | {ov['median_ms']:.2f} | {ov['p99_ms']:.2f} | "
                f"{body['median_ms']:.2f} |"
            )
            if v == "b":
                targets.append(
                    (
                        "(b) claim overhead median <= 1 ms (low load)",
                        f"{ov['median_ms']:.2f} ms",
                        ov["median_ms"] <= 1.0,
                    )
                )
                targets.append(
                    (
                        "(b) claim overhead p99 <= 5 ms (low load)",
                        f"{ov['p99_ms']:.2f} ms",
                        ov["p99_ms"] <= 5.0,
                    )
                )
        if runs:
            for r_v in ("b",):
                samples = [
                    s
                    for r in runs
                    if r["variant"] == r_v
                    and r.get("body", "micro") == "micro"
                    and r.get("worker", "now") == "now"
                    for s in r["samples"]
                ]
                if samples:
                    ov = stats(t - b for _, t, b in samples)
                    targets.append(
                        (
                            "(b) claim overhead median <= 1 ms (full load)",
                            f"{ov['median_ms']:.2f} ms",
                            ov["median_ms"] <= 1.0,
                        )
                    )
                    targets.append(
                        (
                            "(b) claim overhead p99 <= 5 ms (full load)",
                            f"{ov['p99_ms']:.2f} ms",
                            ov["p99_ms"] <= 5.0,
                        )
                    )
        lines.append("")


def round_trips_section(results: dict, lines: list[str], targets: Targets) -> None:
    """Phase 2: PostgreSQL round trips per task from the wire trace."""
    tr = results.get("trace")
    if tr:
        lines += [
            "### PostgreSQL round trips per task (libpq wire trace, pool process connection)",
            "",
            "| path | tasks | round trips: total (body) beyond body | statements |",
            "|---|---|---|---|",
        ]
        groups = trace_groups(tr["traces"])
        amortized_trace = results.get("trace_amortized")
        if amortized_trace:
            groups += [
                (
                    f"{label}, AMORTIZED_COMPLETION (pool process; the main process adds 1/batch)",
                    rows,
                )
                for label, rows in trace_groups(amortized_trace["traces"])
                if label.startswith("(b)")
            ]
        for label, rows in groups:
            rts = [t["round_trips"] for t in rows]
            body = [sum(1 for s in t["statements"] if "benchapp_effect" in s) for t in rows]
            beyond = [a - b for a, b in zip(rts, body, strict=True)]
            typical = max(set(beyond), key=beyond.count)
            example = next(t for t, b in zip(rows, beyond, strict=True) if b == typical)
            lines.append(
                f"| {label} | {len(rows)} | {statistics.median(rts):g} "
                f"({statistics.median(body):g}) **{typical}** (min {min(beyond)}, max {max(beyond)}) | "
                f"{'; '.join(short_sql(s) for s in example['statements'])} |"
            )
            if label.startswith("(b)") and "AMORTIZED" not in label:
                targets.append(
                    ("(b) happy path <= 2 round trips beyond the body", str(typical), typical <= 2)
                )
        lines.append("")


def amortized_batches_section(results: dict, lines: list[str]) -> None:
    """What the AMORTIZED_COMPLETION worker's main process wrote over the whole run."""
    ab = results.get("amortized_batches")
    if ab:
        per = ab["recorded"] / ab["batches"] if ab["batches"] else 0.0
        lines += [
            f"AMORTIZED_COMPLETION worker, whole run: {ab['recorded']:,} completions recorded by "
            f"the main process in {ab['batches']:,} statements ({per:.1f} per batch), i.e. "
            f"1 + {1 / per if per else 0:.2f} statements per task with the pool's claim.",
            "",
        ]


def scale_section(results: dict, lines: list[str], targets: Targets) -> None:
    """Phase 3: claim latency at two sizes, retention purges, the admin changelist."""
    sc = results.get("scale")
    if sc:
        s, lg = sc["small"], sc["large"]
        ratio = lg["claim_complete"]["median_ms"] / s["claim_complete"]["median_ms"]
        lines += [
            "### Scale: claim latency vs existing rows (direct `claims.acquire` + `complete`)",
            "",
            "| existing claims | acquire median / p99 (ms) | acquire+complete median / p99 (ms) | "
            "duplicate lookup median / p99 (ms) |",
            "|---|---|---|---|",
        ]
        for row in (s, lg):
            a, c, d = row["acquire"], row["claim_complete"], row["duplicate"]
            lines.append(
                f"| {row['rows']:,} | {a['median_ms']:.3f} / {a['p99_ms']:.3f} | "
                f"{c['median_ms']:.3f} / {c['p99_ms']:.3f} | {d['median_ms']:.3f} / {d['p99_ms']:.3f} |"
            )
        lines += [
            "",
            f"Ratio large/small (acquire+complete median): {ratio:.2f}x. Loading "
            f"{lg['rows'] - s['rows']:,} claim rows took {sc['load_large_s']:.1f} s.",
            "",
        ]
        targets.append(
            ("claim latency at large within 1.2 x of small", f"{ratio:.2f}x", ratio <= 1.2)
        )
    if sc and "purge_claims" in sc:
        pc = sc["purge_claims"]
        lines += [
            "| retention | rows | time (s) | batch size | rows/s | notes |",
            "|---|---|---|---|---|---|",
            f"| `retention.purge_claims` | {pc['deleted']:,} | {pc['seconds']:.1f} | "
            f"{pc['batch_size']:,} | {pc['deleted'] / pc['seconds']:,.0f} | {pc['batches']} batches, "
            f"longest {pc['longest_batch_ms']:.0f} ms; {pc['left']:,} recent rows kept |",
        ]
        pd = sc.get("purge_deadletters")
        if pd:
            lines.append(
                f"| `manage.py deadletter purge` | {pd['deleted']:,} | {pd['seconds']:.1f} | "
                f"{pd['batch_size']:,} | {pd['deleted'] / pd['seconds']:,.0f} | "
                f"{pd['left']:,} left |"
            )
        lines.append("")
        adm = sc.get("admin") or {"status": "skipped", "note": "--skip deadletters"}
        if adm["status"] == "ok":
            lines += [
                f"### Admin: dead-letter changelist, {adm['rows']:,} rows "
                "(benchmarks/admin_changelist.py)",
                "",
                "```",
                adm["output"],
                "```",
                "",
            ]
            ms = adm["first_page_ms"]
            targets.append(
                (
                    "dead-letter changelist first page <= 300 ms at large",
                    f"{ms:.0f} ms" if ms is not None else "see above",
                    ms <= 300 if ms is not None else None,
                )
            )
        else:
            lines += [f"Admin changelist: not measured ({adm['note']}).", ""]
            if adm.get("output"):
                lines += ["```", adm["output"], "```", ""]
            targets.append(("dead-letter changelist <= 300 ms at large", "not measured", None))


def trace_groups(traces: list[dict]) -> list[tuple[str, list[dict]]]:
    groups: list[tuple[str, list[dict]]] = []
    names = {VARIANTS[v][1]: v for v in "abce"}
    for name, v in names.items():
        rows = [t for t in traces if t.get("task") == name and (t["ran_body"] or v != "b")]
        if rows:
            groups.append((f"({v}) {VARIANTS[v][0]}", rows))
    dups = [t for t in traces if t.get("task") == "bench.idempotent" and not t["ran_body"]]
    if dups:
        groups.append(("(d) duplicate of a succeeded claim", dups))
    return groups


def short_sql(statement: str) -> str:
    s = " ".join(statement.split())
    for table, label in (("celery_hygiene_taskclaim", "taskclaim"), ("benchapp_effect", "effect")):
        s = s.replace(f'\\"{table}\\"', label).replace(f'"{table}"', label).replace(table, label)
    words = s.split()
    if not words:
        return s
    head = words[0].upper()
    if head in ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE"):
        return head
    target = next((t for w in words for t in ("taskclaim", "effect") if t in w), "?")
    return f"{head} {target}"
