"""A TCP relay between one worker and its broker, to cut that worker's broker path only.

Modes, switched from the test: ``pass`` (forward bytes), ``stall`` (keep every socket open and
forward nothing, new connections included: a partition, or a paused Redis, that a client
without a socket timeout waits on forever), and :meth:`Relay.reset` (close every open
connection once: a failover or a broker restart, after which Celery reconnects through the
relay). The other workers and PostgreSQL are untouched.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from urllib.parse import urlsplit, urlunsplit

PORTS = range(17100, 17200)  # this helper's private range (worker branch)


class Relay:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.mode = "pass"
        self.listener = _listen_in(PORTS)
        self.port = self.listener.getsockname()[1]
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def url_for(self, broker_url: str) -> str:
        """``broker_url`` with its host and port replaced by this relay's."""
        parts = urlsplit(broker_url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def reset(self) -> int:
        """Close every open connection (once); returns how many were closed."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        return len(pairs)

    def close(self) -> None:
        self._closed = True
        self.listener.close()
        self.reset()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                if self._closed:
                    return
                continue
            upstream.settimeout(None)
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        peer = {client: upstream, upstream: client}
        try:
            while not self._closed:
                if self.mode == "stall":  # bytes wait in the kernel buffers until "pass" again
                    time.sleep(0.05)
                    continue
                readable, _, _ = select.select([client, upstream], [], [], 0.1)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        raise OSError("closed")
                    peer[sock].sendall(data)
        except (OSError, ValueError):
            for sock in (client, upstream):
                sock.close()


def _listen_in(ports: range) -> socket.socket:
    for port in ports:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            sock.close()
            continue
        sock.listen(64)
        return sock
    raise RuntimeError(f"no free port in {ports.start}-{ports.stop - 1} for a relay")
