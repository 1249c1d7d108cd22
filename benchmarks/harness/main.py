"""One benchmark run, phase by phase (floor, traced run, paced latency, throughput rounds, scale),
with the workers stopped and the queue deleted in a ``finally``; the report printed and the
results saved as JSON in ``benchmarks/results/``."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

from harness.config import ARGS, BEFORE_DB, QUEUE, REPO, RESULTS_DIR, log
from harness.enqueue import enqueue_phase, enqueue_report
from harness.floor import FLOOR_VARIANTS, floor_phase
from harness.machine import machine
from harness.report import report
from harness.runs import latency_run, throughput_cases, throughput_run, trace_run
from harness.scale import scale_phase
from harness.services import (
    declare_queue,
    delete_queue,
    export_before,
    migrate_before,
    recreate_database,
    setup_django,
)
from harness.variants import VARIANTS
from harness.worker import Worker, amortized_batches


def main() -> int:
    started = time.perf_counter()
    log(f"database {ARGS.db}: re-creating; queue {QUEUE}")
    recreate_database(ARGS.db)
    before_src = None
    if "before" in ARGS.compare:
        before_src = export_before(ARGS.before_ref)
        log(f"before: {ARGS.before_ref} exported to {before_src}; database {BEFORE_DB}")
        migrate_before(before_src)
    setup_django()
    from benchapp import tasks

    variants = ARGS.variants
    if "e" in variants and tasks.once is None:
        log("celery-once is not installed in this environment: variant (e) skipped (make bench)")
        variants = variants.replace("e", "")
    declare_queue()
    results: dict = {
        "machine": machine(),
        "args": {
            k: (sorted(v) if isinstance(v, set) else str(v) if isinstance(v, Path) else v)
            for k, v in vars(ARGS).items()
        },
    }
    if "floor" not in ARGS.skip:
        log(f"floor: {ARGS.floor_rounds} rounds of {ARGS.floor_n} claims per variant, in process")
        results["floor"] = floor_phase()
        for name, row in results["floor"].items():
            if name in FLOOR_VARIANTS:
                log(f"floor {name}: {row['wall_ms']:.3f} ms, {row['ratio']:.2f}x raw")
    worker = Worker()
    extra = {kind: Worker(kind, before_src if kind == "before" else None) for kind in ARGS.compare}
    try:
        phases = {"trace", "latency", "throughput", "enqueue"} - ARGS.skip
        if phases:
            worker.start()
            log(f"worker {worker.hostname} ready in {worker.startup_s:.1f}s; log {worker.logfile}")
            results["worker_startup_s"] = worker.startup_s
            worker.pause()
        if "throughput" in phases:
            for w in extra.values():
                w.start()
                w.pause()
                log(f"worker {w.hostname} ready; log {w.logfile}")
        # The first run of a variant on a fresh worker pays for imports and connections: the
        # traced run (not timed) goes first and warms every pool process.
        if "trace" in phases:
            log("round trips: traced run")
            results["trace"] = trace_run(worker, variants)
        if "trace" in phases and "amortized" in extra and "b" in variants:
            log("round trips: traced run, AMORTIZED_COMPLETION worker")
            results["trace_amortized"] = trace_run(extra["amortized"], "b")
        if "latency" in phases:
            lat_variants = "".join(v for v in variants if v in "abce")
            log(f"latency: paced run of {lat_variants}")
            results["latency"] = latency_run(worker, lat_variants)
            results["latency_variants"] = lat_variants
        if "throughput" in phases:
            results["throughput"] = []
            for round_no in range(1, ARGS.rounds + 1):
                for body in ARGS.bodies:
                    for v, w in throughput_cases(body, variants, worker, extra):
                        r = throughput_run(w, v, round_no, body)
                        results["throughput"].append(r)
                        log(
                            f"round {round_no} {body} ({v}) {VARIANTS[v][0]} [{w.kind}]: "
                            f"{r['tasks_per_s']:,.0f} tasks/s ({r['seconds']:.2f}s; publish "
                            f"{r['publish_s']:.1f}s; deferred {r['deferred']})"
                        )
        if "enqueue" in phases:
            log("enqueue on commit: delay, Celery's delay_on_commit, ours")
            results["enqueue"] = enqueue_phase(worker)
            for r in results["enqueue"]:
                log(
                    f"round {r['round']} enqueue {r['way']}: producer p50 "
                    f"{r['producer_p50_ms']:.2f} ms, worker {r['tasks_per_s']:,.0f} tasks/s"
                )
        worker.stop()
        for w in extra.values():
            w.stop()
        if "amortized" in extra:
            results["amortized_batches"] = amortized_batches(extra["amortized"])
        if "scale" not in ARGS.skip:
            results["scale"] = scale_phase()
    finally:
        worker.stop()
        for w in extra.values():
            w.stop()
        with contextlib.suppress(Exception):
            delete_queue()
    results["wall_seconds"] = time.perf_counter() - started
    text = (
        report(results)
        + enqueue_report(results.get("enqueue", []))
        + f"\nWall time of the whole run: {results['wall_seconds']:.0f} s.\n"
    )
    print("\n" + text)
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    slim = {
        **results,
        "throughput": [
            {k: v for k, v in r.items() if k != "samples"} for r in results.get("throughput", [])
        ],
    }
    slim.pop("latency", None)
    slim.pop("trace", None)
    out_json = RESULTS_DIR / f"{'smoke' if ARGS.smoke else 'full'}-{stamp}.json"
    out_json.write_text(json.dumps(slim, indent=2, default=str))
    if ARGS.markdown:
        ARGS.markdown.write_text(text)
    log(f"results: {out_json.relative_to(REPO)}")
    return 0
