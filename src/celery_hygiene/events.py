"""Structured log lines: one event name followed by key=value fields.

task_dead_lettered task=shop.charge_order id=5f0c... attempts=5 exc=TimeoutError
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("celery_hygiene")


def _format_value(value: Any) -> str:
    text = str(value)
    if text == "" or any(ch.isspace() or ch in '"=' for ch in text):
        escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    return text


def format_event(event: str, **fields: Any) -> str:
    parts = [event]
    parts.extend(
        f"{key}={_format_value(value)}" for key, value in fields.items() if value is not None
    )
    return " ".join(parts)


def log_event(level: int, event: str, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, format_event(event, **fields), extra={"event": event, "fields": fields})
