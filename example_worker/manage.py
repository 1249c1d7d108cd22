#!/usr/bin/env python
"""manage.py of the example project (run from the repository root or from here)."""

import os
import sys
from pathlib import Path

# Run as a script, this folder would be sys.path[0] and its celery.py would shadow Celery.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_worker.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
