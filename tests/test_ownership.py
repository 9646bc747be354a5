"""One writer per run, anywhere: the run's OS lock (store/ownership.py).

Real processes throughout: two ``trajstore serve`` on one data directory, the
test process as a local writer or a store client, and a second local writer
process (``clients/local_holder.py``). Whoever holds a run, every other
writer -- in another process, another store, or the same process -- gets
``RunLockedError`` naming the holder, and the holder's frames are intact.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trajstore import HDF5StorageReader, HDF5StorageWriter, RemoteStorageWriter, connect
from trajstore.errors import RunLockedError
from trajstore.store.ownership import RunLock, lock_path

from servers import (
    StoreProcess,
    assert_every_frame_once,
    durable_frames,
    live_config,
    live_state,
    start_live_writer,
    start_store,
    wait_until,
)

MODES = ("create", "append", "overwrite")
LOCAL_HOLDER = Path(__file__).parent / "clients" / "local_holder.py"
FIRST = 10  # frames the holder logs before another writer tries the run
PRIOR = 5  # frames of the run before the holder opens it (append, overwrite)


@pytest.fixture(scope="module")
def two_stores(tmp_path_factory) -> Iterator[tuple[StoreProcess, StoreProcess]]:
    """Stores A and B, two processes serving one data directory."""
    data = tmp_path_factory.mktemp("shared")
    a = start_store(data)
    b = start_store(data)
    yield a, b
    a.stop()
    b.stop()


def local_writer(path: Path, mode: str) -> HDF5StorageWriter[Any, Any]:
    return HDF5StorageWriter(path, live_config(), live_state(0), mode=mode, compile_views=False)


def store_writer(address: str, run: str, mode: str) -> RemoteStorageWriter[Any, Any]:
    return RemoteStorageWriter(
        address, run, live_config(), live_state(0), mode=mode, compile_views=False, timeout=60
    )


def log_frames(log: Any, start: int, stop: int) -> None:
    for step in range(start, stop):
        log.log(live_state(step), step)
    log.flush()


def second_local_process(path: Path, mode: str, *, start: int = 0, hold: bool = False):
    return subprocess.Popen(
        [
            sys.executable,
            str(LOCAL_HOLDER),
            str(path),
            "--mode",
            mode,
            "--start",
            str(start),
            "--frames",
            str(FIRST),
            *(["--hold"] if hold else []),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def fingerprint(path: Path) -> tuple[int, str]:
    """The run file's inode (an overwrite replaces it) and a hash of its bytes."""
    return path.stat().st_ino, hashlib.sha256(path.read_bytes()).hexdigest()


def try_second_writer(kind: str, stores, path: Path, run: str, mode: str) -> str:
    """Open the run as a second writer of ``kind``; the RunLockedError's message."""
    a, b = stores
    if kind == "local process":
        second = second_local_process(path, mode)
        out, err = second.communicate(timeout=120)
        assert second.returncode == 3, out + err
        assert out.startswith("locked "), out
        return out
    if kind in ("local", "same process"):
        with pytest.raises(RunLockedError) as info:
            local_writer(path, mode).__enter__()
        return str(info.value)
    address = a.address if kind == "store A" else b.address
    with pytest.raises(RunLockedError) as info:
        store_writer(address, run, mode).__enter__()
    return str(info.value)


@contextlib.contextmanager
def holding(kind: str, stores, path: Path, run: str, mode: str) -> Iterator[Any]:
    """The first writer of ``kind`` holding the run open."""
    a, _ = stores
    writer = local_writer(path, mode) if kind == "local" else store_writer(a.address, run, mode)
    with writer as log:
        yield log


#: (holder, second writer): local writers in the test process, a second local
#: process, stores A and B on one data directory.
PAIRS = [
    ("local", "local process"),
    ("local", "same process"),
    ("local", "store A"),
    ("store A", "local"),
    ("store A", "store B"),
]


@pytest.mark.parametrize("second_mode", MODES)
@pytest.mark.parametrize("first_mode", MODES)
@pytest.mark.parametrize(("holder", "second"), PAIRS, ids=[f"{h}-{s}" for h, s in PAIRS])
def test_a_second_writer_of_a_held_run_gets_run_locked(
    two_stores, holder, second, first_mode, second_mode
):
    a, _ = two_stores
    run = f"{holder}-{second}-{first_mode}-{second_mode}".replace(" ", "_")
    path = a.run_file(run)
    start = 0
    if first_mode != "create":  # the run exists, written and closed
        with local_writer(path, "create") as log:
            log_frames(log, 0, PRIOR)
        start = PRIOR if first_mode == "append" else 0
    with holding(holder, two_stores, path, run, first_mode) as log:
        log_frames(log, start, start + FIRST)
        before = fingerprint(path)
        message = try_second_writer(second, two_stores, path, run, second_mode)
        assert fingerprint(path) == before  # not replaced, not recovered, not written
        assert not path.with_name(path.name + ".creating").exists()  # no staging either
        holder_pid = os.getpid() if holder == "local" else a.process.pid
        assert f"pid {holder_pid}" in message and "since" in message
        if second in ("store A", "store B"):
            assert repr(run) in message
        log_frames(log, start + FIRST, start + 2 * FIRST)
    assert_every_frame_once(path, start + 2 * FIRST)
    for store in two_stores:
        assert "cleared the status flags" not in "".join(store.log)


def test_the_message_says_where_the_holder_is(tmp_path):
    path = tmp_path / "r.h5"
    with local_writer(path, "create"):
        with pytest.raises(RunLockedError, match=r"another writer in this process \(pid \d+\)"):
            local_writer(path, "append").__enter__()
        other = second_local_process(path, "overwrite")
        out, _ = other.communicate(timeout=120)
    assert other.returncode == 3
    assert f"pid {os.getpid()}) on this host, since " in out


def test_a_live_writers_file_is_never_recovered_by_another_store(two_stores):
    a, b = two_stores
    run = "live-never-recovered"
    path = a.run_file(run)
    writer = start_live_writer(a.address, run, 400, 0.01)
    try:
        wait_until(lambda: durable_frames(a.address, run) >= 20)
        for mode in MODES:
            with pytest.raises(RunLockedError, match=f"pid {a.process.pid}"):
                store_writer(b.address, run, mode).__enter__()
        out, err = writer.communicate(timeout=300)
        assert writer.returncode == 0, out + err
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait(30)
    assert_every_frame_once(path, 400)
    assert "cleared the status flags" not in "".join(b.log)


def test_after_a_local_writer_is_killed_a_store_recovers_and_resumes(two_stores):
    a, b = two_stores
    run = "killed-local"
    path = a.run_file(run)
    holder = second_local_process(path, "create", hold=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().split() == ["durable", str(FIRST)]
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
            store_writer(b.address, run, "append").__enter__()
        holder.send_signal(signal.SIGKILL)
        holder.wait(60)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(60)
    # The lock went with the process: the next writer takes it, recovers the
    # file (the killed writer left it marked open) and resumes after every
    # durable frame.
    with store_writer(b.address, run, "append") as log:
        log_frames(log, FIRST, 2 * FIRST)
    assert_every_frame_once(path, 2 * FIRST)
    assert "cleared the status flags" in "".join(b.log)


def test_after_a_store_is_killed_another_store_recovers_and_resumes(tmp_path):
    run = "killed-store"
    c = start_store(tmp_path)
    b = start_store(tmp_path)
    writer = start_live_writer(c.address, run, 100_000, 0.002, "--reconnect-timeout", "1")
    try:
        wait_until(lambda: durable_frames(c.address, run) >= 20)
        with pytest.raises(RunLockedError, match=f"pid {c.process.pid}"):
            store_writer(b.address, run, "append").__enter__()
        c.stop(signal.SIGKILL)
        writer.kill()
        writer.wait(60)
        with HDF5StorageReader(c.run_file(run)) as reader:
            durable = len(reader.focus_group("group['x']"))
        assert durable >= 20
        with store_writer(b.address, run, "append") as log:
            log_frames(log, durable, durable + FIRST)
        assert_every_frame_once(c.run_file(run), durable + FIRST)
        assert "cleared the status flags" in "".join(b.log)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait(60)
        c.stop(signal.SIGKILL)
        b.stop()


def test_recovery_itself_takes_the_lock(tmp_path):
    from trajstore.store.recovery import rebuild, recover

    path = tmp_path / "r.h5"
    with local_writer(path, "create") as log:
        log_frames(log, 0, FIRST)
        before = fingerprint(path)
        for step in (recover, rebuild):
            with pytest.raises(RunLockedError):
                step(path)
        assert fingerprint(path) == before
        assert not path.with_name(path.name + ".recovering").exists()


def test_a_lock_is_released_when_its_writer_closes_or_fails(tmp_path):
    path = tmp_path / "r.h5"
    with local_writer(path, "create") as log:
        log_frames(log, 0, FIRST)
    RunLock.acquire(path).release()  # closed: free
    with pytest.raises(RunLockedError):  # the lock is taken before the file is looked at
        with RunLock.acquire(path):
            local_writer(path, "create").__enter__()
    with pytest.raises(FileExistsError):  # refused: it gives the lock back
        local_writer(path, "create").__enter__()
    RunLock.acquire(path).release()
    assert lock_path(path) == tmp_path / "r.h5.lock"


def test_lock_files_are_not_runs_and_pull_takes_the_destinations_lock(two_stores, tmp_path):
    a, b = two_stores
    run = "listed-and-pulled"
    with store_writer(a.address, run, "create") as log:
        log_frames(log, 0, FIRST)
    assert lock_path(a.run_file(run)).exists()
    names = []
    for store in two_stores:
        with connect(store.address) as client:
            listed = [info.name for info in client.list_runs()]
        assert run in listed
        assert not any(".lock" in name or ".creating" in name for name in listed)
        names.append(sorted(listed))
    assert names[0] == names[1]
    dest = tmp_path / "copy.h5"
    with connect(b.address) as client:
        client.pull(run, dest, progress=False)
        assert_every_frame_once(dest, FIRST)
        with local_writer(dest, "append") as log:  # someone writes the local copy
            before = fingerprint(dest)
            with pytest.raises(RunLockedError):
                client.pull(run, dest, progress=False)
            assert fingerprint(dest) == before
            log_frames(log, FIRST, FIRST + 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.h5", "copy.h5.lock"]


def test_the_lock_cost_benchmark_runs():
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.lock_cost", "--opens", "3"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.splitlines()[-1])["lock_cost"]
    assert figures["lock_us"] > 0 and figures["open_close_with_lock_us"] > 0
