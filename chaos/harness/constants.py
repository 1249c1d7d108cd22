"""Names the harness shares with the chaos project (``chaos/settings.py``, ``chaos/app``):
the modes, their claim operations and task names, the queue and vhost; and where things live."""

from __future__ import annotations

import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
CHAOS_DIR = REPO_ROOT / "chaos"
RESULTS_DIR = REPO_ROOT / "chaos" / "results"
MODES = ("plain", "atomic")
CONTROL = "control"  # --control: the same body without a claim, to show the counting sees doubles
OPERATIONS = {"plain": "chaos-plain", "atomic": "chaos-atomic"}
TASK_NAMES = {"plain": "chaos.plain_effect", "atomic": "chaos.atomic_effect"}
TERMINAL = ("succeeded", "dead")
RABBIT_VHOST = "chaos"
QUEUE = "chaos"
# A task id, as the workers log it and as kombu's Redis transport stores it.
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
