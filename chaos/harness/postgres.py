"""The private PostgreSQL cluster the harness crash-restarts, and the PgBouncer it may put in
front of it (transaction mode). Never the shared PostgreSQL on 5432."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path

from chaos.harness.shell import HarnessError, log, need, run


class PrivatePostgres:
    """A PostgreSQL cluster of the harness's own (Debian postgresql-common), created if missing."""

    def __init__(self, version: str, name: str, port: int) -> None:
        self.version, self.name, self.port = version, name, port
        hint = "install Debian's postgresql-common and a server (apt-get install -y postgresql)"
        need("pg_createcluster", hint)
        need("pg_ctlcluster", hint)
        need("pg_lsclusters", hint)
        need("pg_isready", "install postgresql-client")

    def status(self) -> str | None:
        out = run(["pg_lsclusters", "--no-header"]).stdout
        for line in out.splitlines():
            cols = line.split()
            if len(cols) >= 4 and cols[0] == self.version and cols[1] == self.name:
                if cols[2] != str(self.port):
                    raise HarnessError(
                        f"cluster {self.version}/{self.name} exists on port {cols[2]}, not "
                        f"{self.port}; pass --pg-port {cols[2]} or --pg-cluster another-name"
                    )
                return cols[3]
        return None

    def ensure_running(self) -> None:
        if self.status() is None:
            log(f"creating PostgreSQL cluster {self.version}/{self.name} on port {self.port}")
            run(["pg_createcluster", self.version, self.name, "--port", str(self.port)])
            hba = Path(f"/etc/postgresql/{self.version}/{self.name}/pg_hba.conf")
            hba.write_text(
                "# celery-hygiene chaos harness: a throwaway local cluster\n"
                "local all all trust\n"
                "host all all 127.0.0.1/32 trust\n"
                "host all all ::1/128 trust\n"
            )
        if self.status() != "online":
            run(["pg_ctlcluster", "--skip-systemctl-redirect", self.version, self.name, "start"])
        self.wait_ready(60)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (
                run(
                    ["pg_isready", "-q", "-h", "127.0.0.1", "-p", str(self.port)], check=False
                ).returncode
                == 0
            ):
                return
            time.sleep(0.3)
        raise HarnessError(f"PostgreSQL on port {self.port} not ready after {timeout}s")

    def crash_restart(self) -> None:
        run(
            [
                "pg_ctlcluster",
                "--skip-systemctl-redirect",
                self.version,
                self.name,
                "restart",
                "-m",
                "immediate",
            ],
            timeout=120,
        )

    def stop(self) -> None:
        run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", self.version, self.name, "stop"],
            check=False,
        )

    def recreate_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')


class PrivatePgBouncer:
    """PgBouncer in transaction mode in front of the private cluster, as its own process."""

    def __init__(self, listen_port: int, pg_port: int, dbname: str) -> None:
        self.listen_port, self.pg_port, self.dbname = listen_port, pg_port, dbname
        self.binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        self.dir = Path(tempfile.mkdtemp(prefix="chaos-pgbouncer-"))
        self.pidfile = self.dir / "pgbouncer.pid"
        self.started = False

    def install(self) -> None:
        if os.path.exists(self.binary):
            return
        if not shutil.which("apt-get"):
            raise HarnessError(
                "--pgbouncer needs pgbouncer, and apt-get is not available to install it"
            )
        log("installing pgbouncer (apt-get install -y pgbouncer)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        proc = run(
            ["apt-get", "install", "-y", "-qq", "pgbouncer"], check=False, env=env, timeout=600
        )
        if proc.returncode != 0:
            run(["apt-get", "update", "-qq"], env=env, timeout=600)
            run(["apt-get", "install", "-y", "-qq", "pgbouncer"], env=env, timeout=600)
        self.binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"

    def start(self) -> None:
        self.install()
        (self.dir / "userlist.txt").write_text('"postgres" ""\n')
        ini = self.dir / "pgbouncer.ini"
        ini.write_text(
            "[databases]\n"
            f"{self.dbname} = host=127.0.0.1 port={self.pg_port} dbname={self.dbname} "
            "user=postgres\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.listen_port}\n"
            f"auth_type = trust\nauth_file = {self.dir / 'userlist.txt'}\n"
            "pool_mode = transaction\nmax_client_conn = 500\ndefault_pool_size = 20\n"
            # The default of 15 s turns a 3 s PostgreSQL restart into ~15 s of refused logins.
            "server_login_retry = 2\n"
            "ignore_startup_parameters = extra_float_digits,options\n"
            f"pidfile = {self.pidfile}\nlogfile = {self.dir / 'pgbouncer.log'}\n"
            f"unix_socket_dir = {self.dir}\n"
        )
        shutil.chown(self.dir, "postgres")
        for path in self.dir.iterdir():
            shutil.chown(path, "postgres")
        cmd = [self.binary, "-d", str(ini)]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        run(cmd)
        self.started = True
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.listen_port), 1),
            ):
                return
            time.sleep(0.1)
        raise HarnessError(f"pgbouncer did not listen on {self.listen_port}")

    def close(self) -> None:
        if not self.started:
            return
        with contextlib.suppress(Exception):
            os.kill(int(self.pidfile.read_text()), signal.SIGTERM)
