"""Real storage servers in their own processes, on port 0, for the tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass
class StoreProcess:
    """A ``trajstore serve`` process and where it keeps its runs."""

    process: subprocess.Popen[str]
    address: str
    data_dir: Path
    log: list[str]

    def run_file(self, run: str) -> Path:
        return self.data_dir / f"{run}.h5"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)


def free_port() -> int:
    """A TCP port free on loopback right now (for a store restarted on the same address)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_store(
    data_dir: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    port: int = 0,
    launcher: Sequence[str] = (),
) -> StoreProcess:
    """Start ``python -m trajstore serve`` on 127.0.0.1 and wait until it listens."""
    data_dir.mkdir(parents=True, exist_ok=True)
    command = [
        *launcher,
        sys.executable,
        "-m",
        "trajstore",
        "serve",
        "--data-dir",
        str(data_dir),
        "--listen",
        f"127.0.0.1:{port}",
        "--log-level",
        "WARNING",
        *extra,
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert process.stdout is not None
    log: list[str] = []
    address = None
    for line in process.stdout:
        log.append(line)
        if line.startswith("trajstore serving on "):
            address = line.split()[3]
            break
    if address is None:
        process.wait(30)
        raise RuntimeError("store did not start:\n" + "".join(log))
    # Keep draining its output so that it never blocks on a full pipe.
    threading.Thread(target=lambda: log.extend(process.stdout or ()), daemon=True).start()
    return StoreProcess(process, address, data_dir, log)


LIVE_WRITER = Path(__file__).parent / "clients" / "live_writer.py"


def start_live_writer(address: str, run: str, frames: int = 200, pause: float = 0.002):
    """A writer process streaming ``frames`` frames (frame i holds i) at a steady pace."""
    return subprocess.Popen(
        [
            sys.executable,
            str(LIVE_WRITER),
            "--address",
            address,
            "--run",
            run,
            "--frames",
            str(frames),
            "--pause",
            str(pause),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
