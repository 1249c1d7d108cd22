"""The harness talking to the machine: its log line, running a command, finding a binary, and
the error for a failed precondition of the harness itself."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time


class HarnessError(RuntimeError):
    """A precondition of the harness itself failed (not a finding about the library)."""


def log(msg: str) -> None:
    sys.stdout.write(f"[chaos {time.strftime('%H:%M:%S')}] {msg}\n")  # one write: threads log too
    sys.stdout.flush()


def run(
    cmd: list[str], *, check: bool = True, timeout: float = 120, **kw
) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise HarnessError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
        )
    return proc


def need(binary: str, hint: str) -> str:
    path = shutil.which(binary) or next(
        (p for p in (f"/usr/sbin/{binary}", f"/usr/bin/{binary}") if os.path.exists(p)), None
    )
    if path is None:
        raise HarnessError(f"`{binary}` not found: {hint}")
    return path
