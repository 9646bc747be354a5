"""Start ``trajstore serve`` as a process of its own, and learn where it listens.

For the demo, the benchmarks and scripts that need a real store beside them
(the tests keep a starter of their own that also records what it prints).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import IO

__all__ = ["READY_PREFIX", "spawn_store"]

#: How ``trajstore serve`` says it listens (on stdout), followed by its address.
READY_PREFIX = "trajstore serving on "


def spawn_store(
    data_dir: Path,
    *options: str,
    listen: str = "127.0.0.1:0",
    log_level: str = "WARNING",
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> tuple[subprocess.Popen[str], str]:
    """Start ``python -m trajstore serve`` keeping runs in ``data_dir``; it and its address.

    Args:
        data_dir: The store's data directory.
        options: More ``serve`` options (``"--processes", "4"``, ...).
        listen: Where it listens (port 0: a free port, the address says which).
        log_level: Its ``--log-level``.
        env: Variables added to this process's environment for it.
        cwd: Its working directory.

    Returns:
        The process and the address it printed (for several processes, their
        addresses separated by commas: what clients take). What it prints
        afterwards is read and dropped, so a full pipe never stalls it.

    Raises:
        RuntimeError: It exited before it listened.
    """
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "trajstore",
            "serve",
            "--data-dir",
            str(data_dir),
            "--listen",
            listen,
            "--log-level",
            log_level,
            *options,
        ],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        env=None if env is None else {**os.environ, **env},
    )
    output = process.stdout
    if output is None:  # stdout=PIPE always gives one; for the type checker
        process.kill()
        raise RuntimeError("trajstore serve was started without its output")
    for line in output:  # a supervisor (--processes) prints its processes' lines first
        if line.startswith(READY_PREFIX):
            threading.Thread(
                target=_drain, args=(output,), name="trajstore-store-output", daemon=True
            ).start()
            return process, line[len(READY_PREFIX) :].split()[0]
    process.wait(60)
    raise RuntimeError(f"trajstore serve exited with {process.returncode} before it listened")


def _drain(output: IO[str]) -> None:
    for _ in output:
        pass
