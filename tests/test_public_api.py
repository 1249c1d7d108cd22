"""Every import path the README and docs show keeps working, whatever room the code lives in.

The modules moved into subpackages by concern (docs/architecture.md); the paths users were told
to import from stay, as the package itself, modules that stayed, or re-exports. PUBLIC lists
them with the object's home, so a re-export that drifts from its home fails here; the scan
below fails for a path a page shows that PUBLIC forgot.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# public path -> where the object lives (the same path for what never moved).
PUBLIC = {
    # README: `from celery_hygiene import ...`, `base=celery_hygiene.HygieneTask`
    "celery_hygiene.HygieneTask": "celery_hygiene.task.hygiene_task.HygieneTask",
    "celery_hygiene.NotFinished": "celery_hygiene.exceptions.NotFinished",
    "celery_hygiene.RetryPolicy": "celery_hygiene.failures.retry.RetryPolicy",
    "celery_hygiene.hygienic_task": "celery_hygiene.task.decorators.hygienic_task",
    "celery_hygiene.idempotent_task": "celery_hygiene.task.decorators.idempotent_task",
    "celery_hygiene.singleton_task": "celery_hygiene.task.decorators.singleton_task",
    # celery_hygiene.task, which docs/retries-and-dead-letters.md names, is now the task room.
    "celery_hygiene.task.HygieneTask": "celery_hygiene.task.hygiene_task.HygieneTask",
    "celery_hygiene.decorators.for_app": "celery_hygiene.task.decorators.for_app",
    "celery_hygiene.decorators.hygienic_task": "celery_hygiene.task.decorators.hygienic_task",
    "celery_hygiene.decorators.idempotent_task": "celery_hygiene.task.decorators.idempotent_task",
    "celery_hygiene.decorators.singleton_task": "celery_hygiene.task.decorators.singleton_task",
    "celery_hygiene.routing.configure_queues": "celery_hygiene.task.routing.configure_queues",
    "celery_hygiene.routing.QueueSpec": "celery_hygiene.task.routing.QueueSpec",
    "celery_hygiene.routing.QueueDeclaration": "celery_hygiene.task.routing.QueueDeclaration",
    "celery_hygiene.retry.RetryPolicy": "celery_hygiene.failures.retry.RetryPolicy",
    "celery_hygiene.retry.Decision": "celery_hygiene.failures.retry.Decision",
    "celery_hygiene.retry.wait_exponential_capped": (
        "celery_hygiene.failures.retry.wait_exponential_capped"
    ),
    "celery_hygiene.retry.wait_celery_backoff": "celery_hygiene.failures.retry.wait_celery_backoff",
    "celery_hygiene.retry.policy_from_celery_options": (
        "celery_hygiene.failures.retry.policy_from_celery_options"
    ),
    "celery_hygiene.retention.purge_claims": "celery_hygiene.failures.retention.purge_claims",
    "celery_hygiene.redaction.DEFAULT_PATTERNS": (
        "celery_hygiene.failures.redaction.DEFAULT_PATTERNS"
    ),
    "celery_hygiene.amortized.HygieneRequest": "celery_hygiene.worker.amortized.HygieneRequest",
    # typed as public in tests/typecheck/check_public_api.py
    "celery_hygiene.replay.replay": "celery_hygiene.failures.replay.replay",
    "celery_hygiene.replay.Outcome": "celery_hygiene.failures.replay.Outcome",
    "celery_hygiene.replay.ReplayResult": "celery_hygiene.failures.replay.ReplayResult",
    # never moved: Django's places and the shared vocabulary
    "celery_hygiene.models.DeadLetter": "celery_hygiene.models.DeadLetter",
    "celery_hygiene.models.TaskClaim": "celery_hygiene.models.TaskClaim",
    "celery_hygiene.signals.task_over_duration": "celery_hygiene.signals.task_over_duration",
    "celery_hygiene.signals.task_duplicate": "celery_hygiene.signals.task_duplicate",
    "celery_hygiene.signals.task_retry_scheduled": "celery_hygiene.signals.task_retry_scheduled",
    "celery_hygiene.signals.task_dead_lettered": "celery_hygiene.signals.task_dead_lettered",
    "celery_hygiene.testing.clear_claims": "celery_hygiene.testing.clear_claims",
    "celery_hygiene.testing.clear_dead_letters": "celery_hygiene.testing.clear_dead_letters",
    "celery_hygiene.conf.reload": "celery_hygiene.conf.reload",
    "celery_hygiene.exceptions.HygieneConfigurationError": (
        "celery_hygiene.exceptions.HygieneConfigurationError"
    ),
    "celery_hygiene.exceptions.EntityKeyError": "celery_hygiene.exceptions.EntityKeyError",
}

# Dotted names in the docs that are not import paths: check ids, permission codenames.
NOT_IMPORTS = re.compile(r"^celery_hygiene\.([WE]\d\w\w|\w+_deadletter)$")


def resolve(dotted: str) -> object:
    """Import the longest importable module prefix of ``dotted``, then get the attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ModuleNotFoundError(dotted)


@pytest.mark.parametrize(("public", "home"), sorted(PUBLIC.items()))
def test_public_path_is_the_object_at_its_home(public: str, home: str) -> None:
    assert resolve(public) is resolve(home)


def test_public_modules_import() -> None:
    for name in ["decorators", "routing", "retry", "retention", "redaction", "amortized"]:
        importlib.import_module(f"celery_hygiene.{name}")
    importlib.import_module("celery_hygiene.task")


def shown_paths() -> set[str]:
    """Every ``celery_hygiene...`` path README.md and docs/*.md show, as imports or dotted."""
    paths: set[str] = set()
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = page.read_text()
        for module, names in re.findall(
            r"from (celery_hygiene(?:\.\w+)*) import ([\w, ]+)", text
        ):
            paths.update(f"{module}.{n.strip()}" for n in names.split(",") if n.strip())
        paths.update(re.findall(r"(?<![\w/])celery_hygiene(?:\.\w+)+", text))
    return {p for p in paths if not NOT_IMPORTS.match(p)}


def test_every_path_the_docs_show_is_listed_and_imports() -> None:
    shown = shown_paths()
    assert shown, "the scan found no celery_hygiene paths in README.md and docs/"
    listed_modules = {p.rsplit(".", 1)[0] for p in PUBLIC} | {"celery_hygiene"}
    for path in sorted(shown):
        resolve(path)
        assert path in PUBLIC or path in listed_modules, f"{path} is shown but not in PUBLIC"
