"""``configure_queues(app)`` with half-loaded Django settings (issue 11, item 3).

A settings module that imports the Celery app (e.g. to build a beat schedule) makes Celery read
the settings while they are still importing. Each case runs in a fresh interpreter, because it is
about import order.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.workers import REPO_ROOT

BASE = """
SECRET_KEY = "half"
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "celery_hygiene"]
DATABASES = {}
USE_TZ = True
CELERY_BROKER_URL = "memory://"
"""

CELERY = """
import os
from celery import Celery
from celery_hygiene.task.routing import configure_queues

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "halfproj.settings.local")
app = Celery("halfproj")
app.config_from_object("django.conf:settings", namespace="CELERY")
{before}
configure_queues(app)


@app.task(name="halfproj.jobs.ping")
def ping():
    return "pong"
"""

MAIN = """
import django
django.setup()
from halfproj.celery import app
app.finalize()
route = app.amqp.router.route({}, "halfproj.jobs.ping")["queue"].name
print("RESULT", app.conf.task_default_queue, route, sorted(q.name for q in app.conf.task_queues))
"""


def _project(tmp_path: Path, *, settings_tail: str, before: str = "") -> Path:
    package = tmp_path / "halfproj"
    (package / "settings").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "settings" / "__init__.py").write_text("")
    (package / "settings" / "base.py").write_text(BASE)
    (package / "settings" / "local.py").write_text(
        "from halfproj.settings.base import *  # noqa: F403\n" + textwrap.dedent(settings_tail)
    )
    (package / "celery.py").write_text(CELERY.format(before=before))
    return tmp_path


def _run(root: Path, code: str = MAIN) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{REPO_ROOT / 'src'}"}
    env["DJANGO_SETTINGS_MODULE"] = "halfproj.settings.local"
    return subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=60
    )


QUEUES = """
CELERY_HYGIENE_QUEUES = {"fast": {"tasks": ["halfproj.*"], "default": True}}
"""


@pytest.mark.parametrize(
    "before",
    [
        "",
        # The app's config is touched before configure_queues, while settings are importing.
        "app.conf.CELERY_DB_REUSE_MAX = 100",
    ],
)
def test_settings_that_import_the_app_still_get_their_queues(tmp_path: Path, before: str) -> None:
    tail = "from halfproj.celery import app  # noqa: E402,F401\n" + QUEUES
    done = _run(_project(tmp_path, settings_tail=tail, before=before))
    assert done.returncode == 0, done.stderr
    assert "RESULT fast fast ['fast']" in done.stdout


def test_no_declaration_at_all_fails_loudly(tmp_path: Path) -> None:
    root = _project(tmp_path, settings_tail="")
    done = _run(root)
    # Deferred to the app's finalization (inside a Celery signal): an ERROR line, not silence.
    assert "configure_queues_found_nothing app=halfproj" in done.stderr
    assert "configure_queues(halfproj) found no CELERY_HYGIENE_QUEUES" in done.stderr
    # Called after the configuration is loaded, it raises at the call.
    direct = _run(
        root,
        "import django; django.setup()\n"
        "from celery import Celery\n"
        "from celery_hygiene.task.routing import configure_queues\n"
        "app = Celery('direct'); app.config_from_object('django.conf:settings', "
        "namespace='CELERY'); app.conf.task_default_queue\n"
        "configure_queues(app)\n",
    )
    assert direct.returncode != 0
    assert "HygieneConfigurationError: configure_queues(direct) found no" in direct.stderr
