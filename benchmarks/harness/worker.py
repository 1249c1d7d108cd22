"""The real ``celery -A benchproject worker`` that serves every run of one compared tree or setting:
started once, its consumer cancelled between runs (so a run's messages are all published before
any starts), stopped warm; and what the AMORTIZED_COMPLETION worker wrote at its shutdown."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.config import ARGS, BEFORE_DB, BENCH_DIR, QUEUE


class Worker:
    """The one ``celery -A benchproject worker`` subprocess that serves every run.

    Between runs its consumer is cancelled (remote control), so the next run's messages are all
    published before any of them starts; start-up and shutdown are never part of a measurement.
    """

    def __init__(self, kind: str = "now", src: Path | None = None) -> None:
        self.kind = kind
        self.alias = "before" if kind == "before" else "default"
        self.hostname = f"bench-{kind}-{os.getpid()}@localhost"
        self.logfile = Path(tempfile.mkstemp(prefix="bench-worker-", suffix=".log")[1])
        self.command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "benchproject",
            "worker",
            "-P",
            "prefork",
            "-c",
            str(ARGS.concurrency),
            "-Q",
            QUEUE,
            "-n",
            self.hostname,
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel=WARNING",
        ]
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                filter(
                    None, [str(src) if src else None, str(BENCH_DIR), os.environ.get("PYTHONPATH")]
                )
            ),
        }
        if kind == "before":
            self.env["BENCH_DB_NAME"] = BEFORE_DB
            self.env["BENCH_LIBRARY_REV"] = ARGS.before_ref
        self.env["BENCH_PREPARED"] = "1" if kind == "prepared" else "0"
        self.env["BENCH_NO_COMPLETE"] = "1" if kind == "nocomplete" else "0"
        self.env["BENCH_ASYNC"] = "1" if kind == "async" else "0"
        self.env["BENCH_AMORTIZED"] = "1" if kind == "amortized" else "0"
        self.totals = self.logfile.with_suffix(".totals.json")
        if kind == "amortized":
            self.env["BENCH_AMORTIZED_TOTALS"] = str(self.totals)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 180.0) -> Worker:
        from benchproject.celery import app

        with self.logfile.open("ab") as out:
            self.process = subprocess.Popen(
                self.command,
                cwd=BENCH_DIR,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started = time.perf_counter()
        deadline = time.monotonic() + timeout
        while not app.control.ping(destination=[self.hostname], timeout=1.0):
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker not ready after {timeout:.0f}s:\n{self.errors()}")
        self.startup_s = time.perf_counter() - started
        return self

    def _control(self, command: str) -> None:
        from benchproject.celery import app

        method = getattr(app.control, command)
        replies = method(QUEUE, destination=[self.hostname], reply=True, timeout=30)
        if not replies:
            raise RuntimeError(f"worker did not answer {command}:\n{self.errors()}")

    def pause(self) -> None:
        self._control("cancel_consumer")

    def resume(self) -> None:
        self._control("add_consumer")

    def check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"worker exited:\n{self.logfile.read_text()[-4000:]}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        # Warm shutdown through the main process only: a SIGTERM to every pool process would
        # make the main process report their last jobs as lost.
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def errors(self) -> str:
        text = self.logfile.read_text(errors="replace")
        return "\n".join(
            line for line in text.splitlines() if "ERROR" in line or "Traceback" in line
        )


def amortized_batches(worker: Worker) -> dict | None:
    """What the AMORTIZED_COMPLETION worker's main process wrote over the whole run (written
    at its warm shutdown by benchproject/celery.py): completions and statements."""
    try:
        return json.loads(worker.totals.read_text())
    except (OSError, ValueError):
        return None
