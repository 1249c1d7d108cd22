"""The private broker the harness cuts: a vhost of its own on the local RabbitMQ, or a
redis-server of its own. Each can reset, cut every client, and say what is still queued."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from chaos.harness.constants import QUEUE, UUID_RE
from chaos.harness.shell import HarnessError, need, run


class PrivateRabbit:
    """A vhost of the harness's own on the local RabbitMQ; cutting it touches no other vhost."""

    def __init__(self, vhost: str) -> None:
        self.vhost = vhost
        self.ctl = need(
            "rabbitmqctl", "install rabbitmq-server (apt-get install -y rabbitmq-server)"
        )
        if self.vhost in ("/", ""):
            raise HarnessError("refusing to cut the default vhost '/'")

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:5672/{self.vhost}"

    def reset(self) -> None:
        # A fresh vhost per run: no message of an earlier run can be counted in this one.
        run([self.ctl, "-q", "delete_vhost", self.vhost], check=False)
        run([self.ctl, "-q", "add_vhost", self.vhost])
        run([self.ctl, "-q", "set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*"])

    def cut(self) -> None:
        run([self.ctl, "-q", "close_all_connections", "--vhost", self.vhost, "chaos"])

    def queue_depth(self) -> int | None:
        proc = run(
            [self.ctl, "-q", "list_queues", "-p", self.vhost, "name", "messages"], check=False
        )
        for line in proc.stdout.splitlines():
            cols = line.split()
            if len(cols) == 2 and cols[0] == QUEUE and cols[1].isdigit():
                return int(cols[1])
        return None

    def state(self) -> dict:
        return {"messages": self.queue_depth()}

    def ids_present(self) -> set[str] | None:
        return None  # RabbitMQ cannot be read without consuming; see queue_depth

    def close(self) -> None:
        pass  # the vhost stays (empty after a drained run); the next run recreates it


class PrivateRedis:
    """A redis-server of the harness's own; ``CLIENT KILL TYPE normal`` cuts only its clients."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        self.server = need("redis-server", "install redis-server (apt-get install -y redis-server)")
        self.cli = need("redis-cli", "install redis-tools (apt-get install -y redis-tools)")
        self.pidfile = workdir / f"redis-{port}.pid"
        self.started = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _ping(self) -> bool:
        return run([self.cli, "-p", str(self.port), "ping"], check=False).stdout.strip() == "PONG"

    def reset(self) -> None:
        if self._ping():
            raise HarnessError(
                f"something already listens on Redis port {self.port} (a leftover of a killed "
                f"run? `redis-cli -p {self.port} shutdown nosave`), or pass --redis-port"
            )
        run(
            [
                self.server,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "yes",
                "--pidfile",
                str(self.pidfile),
            ]
        )
        self.started = True
        deadline = time.monotonic() + 20
        while not self._ping():
            if time.monotonic() > deadline:
                raise HarnessError(f"private redis on {self.port} did not answer")
            time.sleep(0.1)

    def cut(self) -> None:
        run([self.cli, "-p", str(self.port), "CLIENT", "KILL", "TYPE", "normal"])

    def queue_depth(self) -> int | None:
        out = run([self.cli, "-p", str(self.port), "LLEN", QUEUE], check=False).stdout.strip()
        unacked = run(
            [self.cli, "-p", str(self.port), "HLEN", "unacked"], check=False
        ).stdout.strip()
        try:
            return int(out) + int(unacked)
        except ValueError:
            return None

    def state(self) -> dict:
        """What kombu keeps in Redis: ready messages, unacknowledged ones, the restore mutex."""

        def ask(*cmd: str) -> str:
            return run([self.cli, "-p", str(self.port), *cmd], check=False).stdout.strip()

        return {
            "ready": ask("LLEN", QUEUE),
            "unacked": ask("HLEN", "unacked"),
            "unacked_mutex_ttl": ask("TTL", "unacked_mutex"),
        }

    def ids_present(self) -> set[str]:
        """Task ids of every message still in Redis: ready in the list, or unacknowledged."""
        found: set[str] = set()
        for cmd in (["LRANGE", QUEUE, "0", "-1"], ["HVALS", "unacked"]):
            out = run([self.cli, "-p", str(self.port), *cmd], check=False).stdout
            found.update(UUID_RE.findall(out))
        return found

    def close(self) -> None:
        if not self.started:
            return
        run([self.cli, "-p", str(self.port), "shutdown", "nosave"], check=False)
        with contextlib.suppress(Exception):
            pid = int(self.pidfile.read_text())
            os.kill(pid, signal.SIGKILL)
