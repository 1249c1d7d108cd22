"""The node name of the worker whose main process this is, for the task room to read.

The worker's upkeep (``worker/upkeep.py``) sets it when it starts and clears it when it stops;
the main-process reports of a lost run (``HygieneTask.dead_letter_from_parent``, the lost
lease a :class:`~celery_hygiene.task.handover.HygieneRequest` frees) write it as the claim's
worker, the same name its pool processes write. None outside a worker's main process.
"""

from __future__ import annotations

_hostname: str | None = None


def hostname() -> str | None:
    """The node name of the worker this process is the main process of (None elsewhere)."""
    return _hostname


def set_hostname(name: str | None) -> None:
    global _hostname
    _hostname = name
