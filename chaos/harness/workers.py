"""The workers under fire: each ``celery worker`` in its own session (so one SIGKILL takes its whole
process group), and the pool that kills a random one, replaces it, rotates and stops them all."""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from chaos.harness.constants import QUEUE, REPO_ROOT
from chaos.harness.shell import HarnessError
from chaos.harness.timeline import Timeline


class Worker:
    """One ``celery -A chaos.celery_app worker`` in its own session (so killpg takes all of it)."""

    def __init__(
        self, n: int, run_id: str, concurrency: int, logdir: Path, env: dict[str, str]
    ) -> None:
        self.name = f"chaos-{run_id}-w{n}@localhost"
        self.logfile = logdir / f"worker-{n}.log"
        self.started_at = time.time()
        self.command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "chaos.celery_app",
            "worker",
            "-Q",
            QUEUE,
            "-c",
            str(concurrency),
            "-P",
            "prefork",
            "-n",
            self.name,
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel=INFO",
        ]
        with self.logfile.open("ab") as out:
            self.process = subprocess.Popen(
                self.command,
                cwd=REPO_ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def ready(self) -> bool:
        with contextlib.suppress(OSError):
            return " ready." in self.logfile.read_text(errors="replace")
        return False

    def kill(self) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=30)

    def stop(self, timeout: float = 20.0) -> None:
        """Warm shutdown of the main process; the whole group is killed if it takes too long."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout)
        # Pool children left behind by a killed main process, if any.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)


class Pool:
    """The set of live workers; kills and replacements go through here (thread-safe)."""

    def __init__(
        self,
        args: argparse.Namespace,
        run_id: str,
        logdir: Path,
        env: dict[str, str],
        timeline: Timeline,
    ) -> None:
        self.args, self.run_id, self.logdir, self.env, self.timeline = (
            args,
            run_id,
            logdir,
            env,
            timeline,
        )
        self.lock = threading.Lock()
        self.live: list[Worker] = []
        self.dead: list[Worker] = []
        self.count = 0

    def start_one(self) -> Worker:
        with self.lock:
            self.count += 1
            worker = Worker(self.count, self.run_id, self.args.concurrency, self.logdir, self.env)
            self.live.append(worker)
        self.timeline.worker_starts.append(
            {"t": worker.started_at, "pid": worker.pid, "name": worker.name}
        )
        return worker

    def wait_ready(self, workers: list[Worker], timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        for worker in workers:
            while not worker.ready():
                if not worker.alive():
                    raise HarnessError(
                        f"worker exited early; see {worker.logfile}:\n"
                        + worker.logfile.read_text()[-3000:]
                    )
                if time.monotonic() > deadline:
                    raise HarnessError(f"worker not ready after {timeout}s; see {worker.logfile}")
                time.sleep(0.2)

    def kill_random(self) -> None:
        with self.lock:
            candidates = [w for w in self.live if w.alive()]
            if not candidates:
                return
            victim = random.choice(candidates)
            self.live.remove(victim)
        when = time.time()
        victim.kill()
        self.dead.append(victim)
        self.timeline.kills.append(
            {"t": when, "pgid": victim.pid, "name": victim.name, "ready": victim.ready()}
        )

    def replenish(self) -> None:
        with self.lock:
            self.live = [w for w in self.live if w.alive() or self.dead.append(w)]
            missing = self.args.workers - len(self.live)
        for _ in range(missing):
            self.start_one()

    def rotate(self) -> None:
        """Start a fresh worker and warm-stop the oldest: nudges kombu's Redis restore."""
        fresh = self.start_one()
        with contextlib.suppress(HarnessError):
            self.wait_ready([fresh], timeout=60)
        with self.lock:
            oldest = self.live.pop(0) if len(self.live) > self.args.workers else None
        if oldest is not None:
            oldest.stop(timeout=15)
            self.dead.append(oldest)

    def stop_all(self) -> None:
        with self.lock:
            workers, self.live = self.live, []
        for worker in workers:
            with contextlib.suppress(ProcessLookupError):
                if worker.alive():
                    os.kill(worker.pid, signal.SIGTERM)
        for worker in workers:
            worker.stop(timeout=20)
        for worker in self.dead:
            worker.stop(timeout=1)
        # The report reads the logs of pool.dead + pool.live: keep the last workers' logs in it.
        self.dead.extend(workers)
