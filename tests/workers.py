"""Real ``celery worker`` subprocesses for tests: started, awaited, killed, stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


class WorkerProcess:
    """One ``celery -A tests.celery_app worker`` consuming the given queues."""

    def __init__(
        self,
        queues: str,
        *,
        db_name: str,
        concurrency: int = 4,
        pool: str = "prefork",
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        app: str = "tests.celery_app",
    ) -> None:
        self.queues = queues
        self.logfile = Path(tempfile.mkstemp(prefix="hygiene-worker-", suffix=".log")[1])
        self.hostname = f"{queues.split(',')[0]}-{os.getpid()}-{time.monotonic_ns()}@localhost"
        self.command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            app,
            "worker",
            "-Q",
            queues,
            "-c",
            str(concurrency),
            "-P",
            pool,
            "-n",
            self.hostname,
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel=INFO",
            *extra_args,
        ]
        self.env = {**os.environ, "HYGIENE_TEST_DB_NAME": db_name, **(env or {})}
        if os.environ.get("HYGIENE_WORKER_PGPORT"):
            # The PgBouncer leg: workers (the library under test) go through PgBouncer in
            # transaction mode; the test process itself talks to PostgreSQL directly.
            self.env["PGPORT"] = os.environ["HYGIENE_WORKER_PGPORT"]
            self.env["HYGIENE_PGBOUNCER"] = "1"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> WorkerProcess:
        with self.logfile.open("ab") as log:
            self.process = subprocess.Popen(
                self.command,
                cwd=REPO_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready." in self.log():
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log()}")
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"worker not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.logfile.read_text(errors="replace")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool children): a crash, not a shutdown."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self, timeout: float = 20.0) -> None:
        """Warm shutdown (SIGTERM): running tasks finish first; killed if it takes too long.

        Only the main process is signalled, as a process manager would: signalling the pool
        children too makes the main process report their jobs as lost workers.
        """
        if self.process is None or self.process.poll() is not None:
            return
        os.kill(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def wait_for_log(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return
            time.sleep(0.1)
        raise AssertionError(f"{text!r} not in worker log after {timeout}s:\n{self.log()[-5000:]}")
