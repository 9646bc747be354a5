"""Several store processes on one data directory (DESIGN.md §8), with real processes.

Stores on separate ports stand for stores on separate hosts sharing a
filesystem; ``serve --processes N`` is tested as the operator runs it. The
clients are given the list of stores and route each run by its name.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest

from trajstore import HDF5StorageReader, RemoteStorageWriter, connect
from trajstore import errors as E
from trajstore.client.channel import store_target

from servers import (
    StoreProcess,
    assert_every_frame_once,
    durable_frames,
    free_port,
    live_config,
    live_state,
    start_live_writer,
    start_store,
    wait_until,
)


def addresses(stores: list[StoreProcess]) -> str:
    return ",".join(s.address for s in stores)


@pytest.fixture
def three_stores(tmp_path) -> Iterator[list[StoreProcess]]:
    data = tmp_path / "data"
    stores = [start_store(data, "--log-level", "INFO", "--log-format", "json") for _ in range(3)]
    try:
        yield stores
    finally:
        for s in stores:
            s.stop()


def serving(stores: list[StoreProcess], run: str) -> list[int]:
    """Which stores logged opening ``run`` for a writer."""
    return [
        i
        for i, s in enumerate(stores)
        if any("run opened" in line and run in line for line in s.log)
    ]


def finish(writer: subprocess.Popen[str], timeout: float = 240) -> None:
    out, err = writer.communicate(timeout=timeout)
    assert writer.returncode == 0, err
    assert "done" in out


def test_an_address_list_and_a_dns_name_make_routed_targets():
    assert not store_target("127.0.0.1:5000").routed
    listed = store_target("127.0.0.1:5000, 127.0.0.2:5001")
    assert listed.routed and listed.target == "ipv4:127.0.0.1:5000,127.0.0.2:5001"
    named = store_target("localhost:5000,127.0.0.1:5001")
    assert named.routed and named.target.startswith("ipv4:") and named.authority == "localhost"
    assert store_target("dns:///store:50051").routed
    assert store_target("[::1]:5000,[::1]:5001").target == "ipv6:[::1]:5000,[::1]:5001"
    for bad in ("127.0.0.1:5000,nohost", "127.0.0.1:5000,h:99999", "a.invalid:1,b.invalid:2"):
        with pytest.raises(E.InvalidArgumentError):
            store_target(bad)
    with pytest.raises(E.InvalidArgumentError):
        connect("127.0.0.1:1,nonsense")


def test_every_store_lists_every_run_and_follows_runs_written_elsewhere(three_stores):
    stores = three_stores
    frames = 300
    writers = {
        f"c/r{i}": start_live_writer(stores[i].address, f"c/r{i}", frames, 0.01) for i in range(3)
    }
    try:
        wait_until(lambda: all(durable_frames(stores[0].address, r) > 10 for r in writers))
        # Each store lists the three runs, open, whichever process writes them.
        for s in stores:
            with connect(s.address) as client:
                listed = {info.name: info for info in client.list_runs()}
            assert set(listed) == set(writers)
            assert not any(info.damaged for info in listed.values())
            # Open until its writer closed it with every frame (it may have finished by now).
            assert all(info.open or info.frames["group['x']"] == frames for info in listed.values())
        # A follower on another store gets every frame once, in order, to the end.
        with connect(stores[2].address) as client, client.open_run("c/r0") as run:
            seen = [int(frame["b"]) for frame in run.focus_group("group['x']").follow(timeout=240)]
        assert seen == list(range(frames))
    finally:
        for w in writers.values():
            finish(w)
    for s in stores:
        with connect(s.address) as client:
            listed = {info.name: info for info in client.list_runs()}
            assert all(not info.open for info in listed.values())
            assert all(info.frames["group['x']"] == frames for info in listed.values())
            # Reads of the finished runs from every process see all of it.
            for name in writers:
                with client.open_run(name) as run:
                    values = run.focus_group("group['x']")[:]
                np.testing.assert_array_equal(values["b"], np.arange(frames))


def test_reads_in_another_process_see_exactly_the_durable_frames(three_stores):
    a, b, _ = three_stores
    frames = 400
    writer = start_live_writer(a.address, "live", frames, 0.005)
    try:
        wait_until(lambda: durable_frames(a.address, "live") > 0)
        checks = 0
        while writer.poll() is None and checks < 40:
            with connect(b.address) as client, client.open_run("live") as run:
                group = run.focus_group("group['x']")
                count = len(group)
                if count:
                    values = group[:count]
                    # Durable frames are whole: each holds its index everywhere.
                    np.testing.assert_array_equal(values["b"], np.arange(count))
                    np.testing.assert_array_equal(values["a"][:, 5, 1], np.arange(count))
                    checks += 1
                # The writer's store never acknowledged fewer frames than another reads.
                assert durable_frames(a.address, "live") >= count
        assert checks > 0
    finally:
        finish(writer)
    assert_every_frame_once(a.run_file("live"), frames)


def test_a_run_and_its_follower_meet_in_one_store(three_stores):
    stores = three_stores
    everyone = addresses(stores)
    runs = [f"meet/{i}" for i in range(9)]  # all on one store: p = 3 / 3**9
    writers = [start_live_writer(everyone, r, 100, 0.002) for r in runs]
    for w in writers:
        finish(w)
    homes = {r: serving(stores, r) for r in runs}
    # Each run was opened on exactly one store (the one its name hashes to) ...
    assert all(len(h) == 1 for h in homes.values()), homes
    # ... and the runs spread over more than one store.
    assert len({h[0] for h in homes.values()}) > 1, homes
    # A reader given the same list reaches the same stores (seen through Follow's logs).
    with connect(everyone) as client:
        for r in runs:
            with client.open_run(r) as run:
                assert len(list(run.focus_group("group['x']").follow())) == 100


def test_sigkill_of_a_store_loses_no_acknowledged_frame(three_stores):
    stores = three_stores
    everyone = addresses(stores)
    frames = 600
    runs = [f"fail/{i}" for i in range(6)]
    writers = {
        r: start_live_writer(everyone, r, frames, 0.01, "--reconnect-timeout", "240") for r in runs
    }
    try:
        wait_until(lambda: all(serving(stores, r) for r in runs))
        # Kill the store holding the most runs, in mid-stream.
        victim = max(range(3), key=lambda i: sum(serving(stores, r) == [i] for r in runs))
        moved = [r for r in runs if serving(stores, r) == [victim]]
        assert moved
        wait_until(lambda: all(durable_frames(stores[victim].address, r) > 50 for r in moved))
        acknowledged = {r: durable_frames(stores[victim].address, r) for r in moved}
        assert stores[victim].stop(signal.SIGKILL) == -signal.SIGKILL
        for w in writers.values():
            finish(w)
    finally:
        for w in writers.values():
            if w.poll() is None:
                w.kill()
    data = stores[0].data_dir
    for r in runs:
        assert_every_frame_once(data / f"{r}.h5", frames)
        with h5py.File(data / f"{r}.h5", "r"):  # closed cleanly: opens without SWMR
            pass
    for r in moved:  # the runs of the killed store went on elsewhere
        assert any(i != victim for i in serving(stores, r))
        assert acknowledged[r] <= frames


def test_serve_processes_supervises_its_stores(tmp_path):
    data = tmp_path / "data"
    store = start_store(data, "--processes", "3")
    try:
        listed = store.address.split(",")
        assert len(listed) == 3 and len(set(listed)) == 3
        pids = supervised_pids(store)
        assert len(pids) == 3
        writer = start_live_writer(store.address, "proc/run", 400, 0.01)
        wait_until(lambda: durable_frames(listed[0], "proc/run") > 20)
        # Kill one store process: the supervisor starts another on its port.
        killed = pids[1]
        subprocess.run(["kill", "-KILL", str(killed)], check=True)
        wait_until(
            lambda: killed not in supervised_pids(store) and len(supervised_pids(store)) == 3
        )
        wait_until(lambda: answers(listed[1]))  # the new process serves on the old port
        finish(writer)
    finally:
        code = store.stop()
    assert code == 0, "".join(store.log)
    assert_every_frame_once(data / "proc/run.h5", 400)
    assert not supervised_pids(store)


def answers(address: str) -> bool:
    try:
        with connect(address, timeout=10) as client:
            client.list_runs()
    except E.UnavailableError:
        return False
    return True


def supervised_pids(store: StoreProcess) -> list[int]:
    """Pids of the live store processes a supervisor started."""
    out = subprocess.run(
        ["pgrep", "-P", str(store.process.pid), "-f", "trajstore serve"],
        capture_output=True,
        text=True,
    ).stdout
    return [int(p) for p in out.split()]


def test_a_store_process_stops_when_its_supervisor_is_killed(tmp_path):
    store = start_store(tmp_path / "data", "--processes", "2")
    pids = supervised_pids(store)
    assert len(pids) == 2
    store.stop(signal.SIGKILL)

    def gone(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                return stat.read().split()[2] == "Z"
        except FileNotFoundError:
            return True

    wait_until(lambda: all(gone(p) for p in pids))


def test_a_second_store_on_a_port_in_use_refuses_to_start(tmp_path):
    first = start_store(tmp_path / "a")
    port = first.address.rsplit(":", 1)[1]
    try:
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "trajstore",
                "serve",
                "--data-dir",
                str(tmp_path / "b"),
                "--listen",
                f"127.0.0.1:{port}",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode != 0
        assert "port is in use" in second.stderr
    finally:
        assert first.stop() == 0


def test_a_writer_reconnecting_elsewhere_waits_for_the_old_sessions_lock(three_stores):
    """A store cut off (not dead) still holds the run: a writer moved elsewhere waits for it."""
    a, b, _ = three_stores
    # A session on store A whose client vanished: A keeps it (and the lock) for its lease.
    config, state = live_config(), live_state(0)
    log = RemoteStorageWriter(a.address, "held", config, state, 10, compile_views=False)
    log.__enter__()
    log.log(live_state(0), 0)
    log.flush()
    try:
        with pytest.raises(E.RunLockedError, match="another process"):
            with RemoteStorageWriter(
                b.address,
                "held",
                config,
                state,
                10,
                mode="append",
                compile_views=False,
                timeout=5,
                reconnect_timeout=1,
            ):
                pass
    finally:
        log.__exit__(None, None, None)
    # Once A let go, B takes it.
    with RemoteStorageWriter(
        b.address, "held", config, state, 10, mode="append", compile_views=False
    ) as again:
        for step in range(1, 10):
            again.log(live_state(step), step)
    with connect(b.address) as client, client.open_run("held") as run:
        np.testing.assert_array_equal(run.focus_group("group['x']")[:]["b"], np.arange(10))


def write_frames(address: str, run: str, steps: range, mode: str, offset: int = 0) -> None:
    """Log ``steps`` of the live writer's run through ``address``; frame i holds i + offset."""
    config = live_config()
    with RemoteStorageWriter(
        address, run, config, live_state(0), 100, mode=mode, compile_views=False
    ) as log:
        for step in steps:
            log.log(live_state(step + offset), step)


def read_values(address: str, run: str) -> np.ndarray:
    with connect(address) as client, client.open_run(run) as opened:
        return np.asarray(opened.focus_group("group['x']")[:]["b"])


def test_a_store_never_serves_a_run_as_it_was_before_another_store_changed_it(three_stores):
    """B has the run's file open from earlier reads; A and C rewrite it under B."""
    a, b, c = three_stores
    write_frames(a.address, "again", range(10), "create")
    np.testing.assert_array_equal(read_values(b.address, "again"), np.arange(10))
    write_frames(a.address, "again", range(5), "overwrite", offset=100)
    np.testing.assert_array_equal(read_values(b.address, "again"), np.arange(5) + 100)
    write_frames(c.address, "again", range(5, 8), "append", offset=100)
    np.testing.assert_array_equal(read_values(b.address, "again"), np.arange(8) + 100)
    with connect(b.address) as client:
        (info,) = client.list_runs()
    assert info.frames["group['x']"] == 8 and not info.open


def test_a_writer_closes_through_the_store_holding_its_session(tmp_path):
    """Its run's store dies and comes back while the writer goes on elsewhere: it still closes.

    The writer's calls about the run hash to the store that came back, but its
    session lives on the store it reconnected to; the close travels on the
    write stream, which reaches that one.
    """
    data = tmp_path / "data"
    ports = [free_port() for _ in range(3)]
    stores = [
        start_store(data, "--log-level", "INFO", "--log-format", "json", port=p) for p in ports
    ]
    everyone = addresses(stores)
    try:
        writer = start_live_writer(everyone, "moved", 500, 0.01)
        wait_until(lambda: serving(stores, "moved"))
        (home,) = serving(stores, "moved")
        wait_until(lambda: durable_frames(stores[home].address, "moved") > 30)
        stores[home].stop(signal.SIGKILL)
        others = [s for i, s in enumerate(stores) if i != home]
        wait_until(
            lambda: any("moved" in line and "run opened" in line for s in others for line in s.log)
        )
        stores[home] = start_store(
            data, "--log-level", "INFO", "--log-format", "json", port=ports[home]
        )
        finish(writer)
    finally:
        for s in stores:
            s.stop()
    assert_every_frame_once(data / "moved.h5", 500)
    with h5py.File(data / "moved.h5", "r") as f:  # closed cleanly, with its steps recorded
        assert int(f.attrs["actual_steps"]) == 500


LOCAL_HOLDER = Path(__file__).parent / "clients" / "local_holder.py"


def test_a_file_being_extended_by_another_process_is_not_damaged(tmp_path):
    """HDF5 checks a file's length before its status flags: one caught mid-extension
    by its writer in another process reads as truncated without SWMR, but is not damaged."""
    path = tmp_path / "grow.h5"
    holder = subprocess.Popen(
        [sys.executable, str(LOCAL_HOLDER), str(path), "--mode", "create", "--hold"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().startswith("durable")
        # As the moment between the writer's superblock and its data reaching the file.
        os.truncate(path, path.stat().st_size - 1)
        with HDF5StorageReader(path) as reader:
            assert len(reader.focus_group("group['x']")) == 10
    finally:
        holder.kill()
        holder.wait()
    # Its writer is gone: now it is what it looks like.
    with pytest.raises(E.RunDamagedError, match="truncated"):
        HDF5StorageReader(path).__enter__()


def test_serve_processes_pass_every_setting_and_no_secret_on_a_command_line(tmp_path):
    store = start_store(tmp_path / "data", "--processes", "2", "--tokens", "write:w-secret,read:r")
    try:
        for address in store.address.split(","):
            with (
                connect(address, token="", timeout=30) as client,
                pytest.raises(E.UnauthenticatedError),
            ):
                client.list_runs()
            with connect(address, token="r", timeout=30) as client:
                assert client.list_runs() == []
        for pid in supervised_pids(store):
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                assert b"w-secret" not in cmdline.read()
    finally:
        assert store.stop() == 0
