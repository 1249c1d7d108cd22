"""Fault-injection suite for celery-hygiene claims (``make chaos``, ``make chaos-smoke``).

Publishes thousands of ``chaos.plain_effect`` / ``chaos.atomic_effect`` tasks (every key once per
mode, a share of them twice), SIGKILLs whole worker process groups every few seconds, restarts a
private PostgreSQL cluster with ``-m immediate``, closes every broker connection once, then
drains and counts per key from the ``SideEffect`` table: ran once / ran twice+ / lost /
dead-lettered, per mode, and whether each plain-mode double is explained by a kill that fell
between the body's effect and the claim's completion.

Everything it cuts is its own: PostgreSQL cluster ``15/faults`` on port 5440, RabbitMQ vhost
``chaos`` (or a Redis on port 6391), PgBouncer on 6441. Never the shared services.

    python chaos/run.py --smoke                       # ~1-2 min, RabbitMQ
    python chaos/run.py --broker redis --keys 1000    # medium run on Redis
    python chaos/run.py --smoke --amortized           # with AMORTIZED_COMPLETION on
    python chaos/run.py --help
"""

from __future__ import annotations

import sys
from pathlib import Path

# `python chaos/run.py` puts chaos/ on sys.path, not the repository root that holds the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chaos.harness.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(description=__doc__))
