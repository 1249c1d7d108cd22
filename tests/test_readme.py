"""The README's code works with only ``pip install celery-hygiene`` (issue 23).

A project imports what it declares: the README's examples import nothing but the library, the
standard library and the project's own modules (tenacity's waits come re-exported from
``celery_hygiene.failures.retry``), and its ``tasks.py`` example runs as written.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys

from tests.workers import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)
PROJECT_MODULES = {"proj"}  # the reader's own project, as the README names it


def _imported(source: str) -> set[str]:
    tree = ast.parse(source.replace("[...,", "["))  # "INSTALLED_APPS = [..., ...]" is prose
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module.split(".")[0])
    return modules


def test_the_readme_imports_only_the_library_and_the_standard_library() -> None:
    assert len(BLOCKS) >= 3
    for block in BLOCKS:
        foreign = {
            module
            for module in _imported(block)
            if module not in sys.stdlib_module_names
            and module != "celery_hygiene"
            and module not in PROJECT_MODULES
        }
        assert not foreign, f"README block imports {foreign}:\n{block}"


def test_the_readme_tasks_example_runs_as_written() -> None:
    # In a process of its own: shared tasks would join every Celery app of this one for good.
    [tasks] = [block for block in BLOCKS if block.startswith("# tasks.py")]
    probe = (
        "import sys, types, django\n"
        "django.setup()\n"
        "module = types.ModuleType('readme_tasks')\n"
        "sys.modules['readme_tasks'] = module\n"
        "exec(compile(sys.stdin.read(), 'README.md', 'exec'), module.__dict__)\n"
        "policy = module.capture_payment.hygiene_policy()\n"
        "print(policy.max_attempts, policy.give_up_on, 2 <= policy.countdown(1) <= 3)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        input=tasks,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == "5 (<class 'ValueError'>,) True"
