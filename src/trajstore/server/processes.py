"""``trajstore serve --processes N``: N store processes on one host, supervised.

One store process is one GIL and one HDF5 library lock (h5py serialises
every HDF5 call), so a host with many cores runs several. They share the
data directory exactly as stores on different hosts do (DESIGN.md §8): each
run is written under its lock, every process lists and reads every run.

Each process listens on its own port -- ``--listen``'s port, the next one,
and so on (with port 0, each its own free port) -- and clients are given
the list (``host:p1,host:p2,...``), over which they route each run by a
hash of its name. One port each rather than one port shared through
``SO_REUSEPORT``: the kernel spreads *connections* over the processes of a
shared port, so a writer whose connection dropped would reconnect to a
random process, while its session (and the run's lock) stays with the old
one until its lease runs out -- the writer would stall for a lease; with one
port each, it comes back to the process that holds its session and goes on
at once. It also lets a run's writer and its live readers meet in one
process, where a follower is woken by each acknowledgement rather than
polling the file.

The supervisor passes its settings to each process through the
``TRAJSTORE_*`` environment (never the command line, which other users of
the host can read), restarts a process that dies on the same port (with a
growing pause if it keeps dying), and on SIGTERM or SIGINT stops them all,
each draining and flushing its runs. A store process whose supervisor is
gone stops by itself.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from trajstore.server.launch import READY_PREFIX

__all__ = ["SUPERVISOR_ENV", "Supervisor", "process_listens"]

log = logging.getLogger("trajstore.server")

#: Set in each supervised store process's environment: its supervisor's pid.
SUPERVISOR_ENV = "TRAJSTORE_SUPERVISOR_PID"

#: A store process gets this long to print where it listens.
START_TIMEOUT = 120.0

#: A process that dies within this many seconds of its start is restarted
#: after a pause that doubles each time (up to :data:`MAX_RESTART_PAUSE`).
QUICK_DEATH_SECONDS = 10.0
MAX_RESTART_PAUSE = 30.0


def _with_port(address: str, offset: int) -> str:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{address!r} is not host:port")
    number = int(port)
    if number == 0:
        return address
    if number + offset > 65535:
        raise ValueError(f"{address!r}: no port {number + offset} for process {offset + 1}")
    return f"{host}:{number + offset}"


def process_listens(
    listen: str, metrics_listen: str | None, count: int
) -> list[tuple[str, str | None]]:
    """Where each of ``count`` processes listens: consecutive ports (port 0: each its own)."""
    return [
        (_with_port(listen, i), None if metrics_listen is None else _with_port(metrics_listen, i))
        for i in range(count)
    ]


@dataclass
class _Slot:
    """One store process's place: its addresses, and the process now filling it."""

    number: int
    listen: str
    metrics_listen: str | None
    process: subprocess.Popen[str] | None = None
    address: str | None = None
    started: float = 0.0
    pause: float = 0.0
    restart_at: float | None = None
    ready: threading.Event = field(default_factory=threading.Event)


class Supervisor:
    """Starts, watches and stops the store processes of one ``serve --processes N``.

    Args:
        listens: ``(listen, metrics_listen)`` of each process.
        env: The processes' environment, every setting as its ``TRAJSTORE_*``
            variable; the supervisor adds each one's addresses.
    """

    def __init__(self, listens: list[tuple[str, str | None]], env: Mapping[str, str]) -> None:
        self._slots = [_Slot(i + 1, listen, metrics) for i, (listen, metrics) in enumerate(listens)]
        self._env = dict(env)
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    @property
    def addresses(self) -> list[str]:
        """Where the processes listen (known once :meth:`start` returned)."""
        return [slot.address or slot.listen for slot in self._slots]

    def start(self) -> list[str]:
        """Start every process and wait until each listens; their addresses.

        Raises:
            RuntimeError: A process exited or did not listen in time (the
                others are stopped).
        """
        for slot in self._slots:
            self._spawn(slot)
        deadline = time.monotonic() + START_TIMEOUT
        for slot in self._slots:
            while not slot.ready.wait(0.1):
                process = slot.process
                if process is not None and process.poll() is not None:
                    self.stop(grace=5)
                    raise RuntimeError(
                        f"store process {slot.number} (listening on {slot.listen}) exited "
                        f"with {process.returncode} before it served"
                    )
                if time.monotonic() > deadline:
                    self.stop(grace=5)
                    raise RuntimeError(f"store process {slot.number} did not start in time")
        return self.addresses

    def _spawn(self, slot: _Slot) -> None:
        # Once a process has listened, its successors take the same port.
        listen = slot.address or slot.listen
        env = {**self._env, SUPERVISOR_ENV: str(os.getpid())}
        env["TRAJSTORE_LISTEN"] = listen
        env["TRAJSTORE_PROCESSES"] = "1"
        env.pop("TRAJSTORE_METRICS_LISTEN", None)
        if slot.metrics_listen is not None:
            env["TRAJSTORE_METRICS_LISTEN"] = slot.metrics_listen
        slot.ready.clear()
        slot.started = time.monotonic()
        slot.process = subprocess.Popen(
            [sys.executable, "-m", "trajstore", "serve"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        forward = threading.Thread(
            target=self._forward, args=(slot, slot.process), name=f"store-{slot.number}"
        )
        forward.daemon = True
        forward.start()

    def _forward(self, slot: _Slot, process: subprocess.Popen[str]) -> None:
        """Pass a process's output on, and learn from it where the process listens."""
        out = process.stdout
        if out is None:
            return
        for line in out:
            if line.startswith(READY_PREFIX) and not slot.ready.is_set():
                slot.address = line[len(READY_PREFIX) :].split()[0]
                print(
                    f"trajstore: process {slot.number} (pid {process.pid}) serving on "
                    f"{slot.address}",
                    flush=True,
                )
                slot.ready.set()
            else:
                print(line, end="", flush=True)

    def watch(self, stop: threading.Event) -> None:
        """Restart processes that die, until ``stop`` is set."""
        while not stop.wait(0.5):
            with self._lock:
                for slot in self._slots:
                    self._tend(slot)

    def _tend(self, slot: _Slot) -> None:
        process = slot.process
        now = time.monotonic()
        if slot.restart_at is not None:
            if now >= slot.restart_at and not self._stopping.is_set():
                slot.restart_at = None
                log.warning("restarting store process %d on %s", slot.number, slot.address)
                self._spawn(slot)
            return
        if process is None or process.poll() is None:
            return
        quick = now - slot.started < QUICK_DEATH_SECONDS
        slot.pause = min(max(slot.pause * 2, 1.0), MAX_RESTART_PAUSE) if quick else 0.0
        log.warning(
            "store process %d (pid %d) exited with %s; restarting it in %.0f s",
            slot.number,
            process.pid,
            process.returncode,
            slot.pause,
        )
        slot.restart_at = now + slot.pause

    def stop(self, grace: float) -> int:
        """SIGTERM every process, wait for them to drain and flush.

        Returns:
            0 if every process running at the call stopped cleanly, else 1.
        """
        self._stopping.set()
        with self._lock:
            running = [
                s.process for s in self._slots if s.process is not None and s.process.poll() is None
            ]
        for process in running:
            process.send_signal(signal.SIGTERM)
        clean = True
        deadline = time.monotonic() + grace + 60
        for process in running:
            try:
                code = process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.error("store process %d did not stop: killed", process.pid)
                process.kill()
                code = process.wait()
            clean = clean and code == 0
        return 0 if clean else 1
