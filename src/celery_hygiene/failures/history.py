"""Who did what to a dead letter: replay, discard and recover leave an admin ``LogEntry``.

The rows are the admin's own (*History* on a dead letter, *Recent actions* on the index), so
operators read one trail whether the action came from the admin or from ``manage.py
deadletter``. The admin records ``request.user``. The command records the Django user named by
``--by`` or, by default, the OS user running it; if no Django user has that name the entry goes to
an inactive service user (``CELERY_HYGIENE["AUDIT_CLI_USERNAME"]``, "deadletter-cli") and the
message names the OS user. Every action is also one ``deadletter_action`` log line.
"""

from __future__ import annotations

import getpass
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.apps import apps

from celery_hygiene import conf
from celery_hygiene.events import log_event
from celery_hygiene.models import DeadLetter


@dataclass(frozen=True)
class Actor:
    user: Any  # a Django user, or None when django.contrib.auth is not installed
    name: str  # who, as printed in the entry
    via: str  # "admin" or "manage.py deadletter"

    @property
    def label(self) -> str:
        return f"by {self.name} via {self.via}"


def admin_actor(request: Any) -> Actor:
    user = request.user
    return Actor(user, user.get_username(), "admin")


def os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry (containers): say so rather than fail
        return os.environ.get("USER") or os.environ.get("LOGNAME") or f"uid {os.getuid()}"


def cli_actor(by: str | None = None) -> Actor:
    """The person running ``manage.py deadletter``: ``--by NAME``, else the OS user."""
    name = by or os_user()
    if not apps.is_installed("django.contrib.auth"):
        return Actor(None, name, "manage.py deadletter")
    from django.contrib.auth import get_user_model

    model = get_user_model()
    user = model._default_manager.filter(**{model.USERNAME_FIELD: name}).first()
    if user is None:
        user = _service_user(model)
    return Actor(user, name, "manage.py deadletter")


def _service_user(model: Any) -> Any:
    username = conf.get("AUDIT_CLI_USERNAME")
    user = model._default_manager.filter(**{model.USERNAME_FIELD: username}).first()
    if user is None:
        user = model(**{model.USERNAME_FIELD: username})
        user.is_active = False  # cannot log in: it only owns command-line history entries
        user.set_unusable_password()
        user.save()
    return user


def record(actor: Actor, action: str, messages: Mapping[int, str]) -> None:
    """One ``LogEntry`` (CHANGE) per dead letter: ``messages`` maps its id to what happened."""
    if not messages:
        return
    for pk, text in messages.items():
        log_event(
            logging.INFO,
            "deadletter_action",
            action=action,
            id=pk,
            by=actor.name,
            via=actor.via,
            detail=text,
        )
    if actor.user is None or not apps.is_installed("django.contrib.admin"):
        return
    from django.contrib.admin.models import CHANGE, LogEntry
    from django.contrib.contenttypes.models import ContentType

    content_type = ContentType.objects.get_for_model(DeadLetter)
    reprs = {
        dl.pk: str(dl)
        for dl in DeadLetter.objects.filter(pk__in=list(messages)).only(
            "pk", "task_name", "task_id", "exception_type"
        )
    }
    LogEntry.objects.bulk_create(
        [
            LogEntry(
                user_id=actor.user.pk,
                content_type_id=content_type.pk,
                object_id=str(pk),
                object_repr=reprs.get(pk, f"dead letter {pk}")[:200],
                action_flag=CHANGE,
                change_message=f"{action.capitalize()}: {text} ({actor.label})",
            )
            for pk, text in messages.items()
        ]
    )
