"""Bounded recovery of a killed worker's messages on a Redis broker.

kombu's Redis transport keeps a delivered, unacknowledged message in its ``unacked`` hash. After
the worker dies, the message comes back only when its ``visibility_timeout`` has passed *and* a
restore scan runs: on worker start or shutdown, or every ``unacked_restore_interval`` x
``unacked_restore_throttle`` seconds of the event loop (about 100 s by default). So each worker's
broker upkeep thread (``worker/broker_upkeep.py``) also runs that scan itself, every
``REDIS_RESTORE_SECONDS``, on a connection of its own with socket timeouts. kombu's mutex in
Redis keeps concurrent scans from restoring a message twice.

What it cannot change: a message is only restored once its visibility timeout has passed, and a
restored message whose claim is still leased waits for the lease to lapse. A killed worker's
work therefore comes back within about ``max(visibility_timeout + REDIS_RESTORE_SECONDS,
lease)`` of the kill.
"""

from __future__ import annotations

from typing import Any


def uses_redis(app: Any) -> bool:
    url = str(app.conf.broker_read_url or app.conf.broker_url or "")
    return url.startswith(("redis://", "rediss://", "redis+socket://", "sentinel://"))


def restore_visible(app: Any, connection: Any = None) -> int | None:
    """Run one restore scan now; returns what kombu returns (None when nothing was due)."""
    if connection is None:
        with app.connection_for_read() as own:
            return restore_visible(app, own)
    channel = connection.default_channel
    qos = getattr(channel, "qos", None)
    if qos is None or not hasattr(qos, "restore_visible"):
        return None
    # interval=1: scan on this call (kombu's throttle counts calls of the event loop).
    restored: int | None = qos.restore_visible(num=channel.unacked_restore_limit, interval=1)
    return restored
