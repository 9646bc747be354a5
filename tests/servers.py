"""Real storage servers in their own processes, on port 0, for the tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trajstore import HDF5StorageReader, connect


@dataclass
class StoreProcess:
    """A ``trajstore serve`` process and where it keeps its runs."""

    process: subprocess.Popen[str]
    address: str
    data_dir: Path
    log: list[str]
    drain: threading.Thread | None = None

    def run_file(self, run: str) -> Path:
        return self.data_dir / f"{run}.h5"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Send ``sig`` and wait for the exit code; a store that does not exit is killed."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()  # no store outlives its test
            self.process.wait(timeout)
            raise RuntimeError(
                f"store did not exit within {timeout} s of signal {sig}:\n" + "".join(self.log)
            ) from None
        if self.drain is not None:
            self.drain.join(timeout)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return code


#: Every store process started, so that the session can make sure none outlives it.
STARTED: list[subprocess.Popen[str]] = []


def kill_leftover_stores() -> list[int]:
    """SIGKILL started stores still running; their pids."""
    left = [p for p in STARTED if p.poll() is None]
    for process in left:
        process.kill()
        process.wait(30)
    return [p.pid for p in left]


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
    STARTED.append(process)
    log: list[str] = []
    address = None
    # A store that hangs before it listens is killed after a minute (then its output ends).
    watchdog = threading.Timer(60, process.kill)
    watchdog.start()
    try:
        for line in process.stdout:
            log.append(line)
            if line.startswith("trajstore serving on "):
                address = line.split()[3]
                break
    finally:
        watchdog.cancel()
    if address is None:
        process.kill()
        process.wait(30)
        raise RuntimeError("store did not start:\n" + "".join(log))
    # Keep draining its output so that it never blocks on a full pipe.
    drain = threading.Thread(target=lambda: log.extend(process.stdout or ()), daemon=True)
    drain.start()
    return StoreProcess(process, address, data_dir, log, drain)


LIVE_WRITER = Path(__file__).parent / "clients" / "live_writer.py"


def start_live_writer(address: str, run: str, frames: int = 200, pause: float = 0.002, *extra: str):
    """A writer process streaming ``frames`` frames (frame i holds i) at a steady pace.

    ``extra``: more options of ``clients/live_writer.py`` (``--journal PATH``, ...).
    """
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
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def durable_frames(address: str, run: str, timeout: float = 120) -> int:
    """Frames of the live writer's group the store has made durable."""
    with connect(address, timeout=timeout) as client:
        for info in client.list_runs():
            if info.name == run:
                return info.frames["group['x']"]
    return 0


def wait_until(
    predicate: Callable[[], object], timeout: float = 120, interval: float = 0.05
) -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError("condition not reached in time")


def assert_every_frame_once(path: Path, frames: int) -> None:
    """The live writer's run at ``path`` holds frames 0..frames-1, each once, in order."""
    with HDF5StorageReader(path) as reader:
        group = reader.focus_group("group['x']")
        assert len(group) == frames
        values = group[:]
    np.testing.assert_array_equal(values["b"], np.arange(frames))
    np.testing.assert_array_equal(values["a"][:, 7, 2], np.arange(frames, dtype=np.float32))


def live_config() -> dict[str, Any]:
    """The live writer's config: group ``x`` with leaves ``a`` and ``b``, every step."""
    from trajstore import EveryNStep, WriterGroupConfig, view

    return {"x": WriterGroupConfig(view(lambda s: {"a": s["a"], "b": s["b"]}), EveryNStep(1))}


def live_state(step: int) -> dict[str, Any]:
    """The live writer's state at ``step``: every value is ``step``."""
    return {"a": np.full((64, 3), step, np.float32), "b": np.int64(step)}
