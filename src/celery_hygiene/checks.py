"""Django system checks for celery_hygiene configuration (the hygiene audit lives here)."""

from __future__ import annotations

from typing import Any

from django.core import checks

from . import conf


@checks.register("celery_hygiene")
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    return [
        checks.Warning(
            f"CELERY_HYGIENE has an unknown key {key!r}.",
            hint=f"Known keys: {', '.join(sorted(conf.DEFAULTS))}.",
            id="celery_hygiene.W001",
        )
        for key in conf.unknown_keys()
    ]
