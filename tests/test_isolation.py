"""One bad file, run or client never takes the store from everyone else (issue 16).

Each test runs a real store process over a data directory holding what a
careless operator or a hostile client leaves there -- a damaged file, a
file that is no run, a run with huge metadata, a writer killed mid-frame --
and checks that the store reports the bad thing as bad and keeps serving the
rest.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import h5py
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hostility import Hostile, damage, plant_junk
from trajstore import (
    EveryNStep,
    HDF5StorageWriter,
    RemoteStorageWriter,
    WriterGroupConfig,
    connect,
    view,
)
from trajstore import errors as E
from trajstore.store.recovery import lookup3
from trajstore.v1 import query_pb2 as qpb
from trajstore.v1 import query_pb2_grpc as qpb_grpc

from servers import assert_every_frame_once, start_live_writer, start_store, wait_until

CLIENTS = Path(__file__).parent / "clients"
#: A generous deadline: the old store stalled for many minutes on a damaged file.
DEADLINE = 60


def config():
    return {"x": WriterGroupConfig(view(lambda s: s), EveryNStep(1))}


def write_local(path: Path, frames: int = 10, metadata=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = np.zeros(4, np.float32)
    with HDF5StorageWriter(path, config(), state, total_steps=frames, metadata=metadata) as w:
        for step in range(frames):
            w.log(np.full(4, step, np.float32), step)


def superblock(data: bytes) -> tuple[int, int]:
    """(size of the superblock before its checksum, root object header address)."""
    assert data[8] in (2, 3) and data[9] == 8, "expected a version 2/3 superblock, 8-byte offsets"
    return 12 + 4 * 8, int.from_bytes(data[36:44], "little")


def flip_superblock_bit(path: Path) -> None:
    """One bit of the superblock flipped: its checksum no longer verifies."""
    data = bytearray(path.read_bytes())
    data[20] ^= 0x10
    path.write_bytes(bytes(data))


def damage_as_if_open(path: Path) -> None:
    """Status flags set (a writer holds it, as far as readers can tell), root header damaged.

    Readers must open such a file with SWMR, which retries every metadata read
    whose checksum fails.
    """
    data = bytearray(path.read_bytes())
    size, root = superblock(bytes(data))
    data[11] = 0x05  # write access + SWMR write
    data[size : size + 4] = lookup3(bytes(data[:size])).to_bytes(4, "little")
    data[root + 12] ^= 0xFF
    path.write_bytes(bytes(data))


def serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=DEADLINE
        )
    return status.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("damage", [flip_superblock_bit, damage_as_if_open])
def test_a_damaged_file_affects_only_itself(tmp_path, damage):
    data = tmp_path / "data"
    write_local(data / "good.h5")
    write_local(data / "bad.h5")
    damage(data / "bad.h5")
    store = start_store(data)
    try:
        with RemoteStorageWriter(store.address, "live", config(), np.zeros(4, np.float32)) as w:
            for step in range(5):
                w.log(np.full(4, step, np.float32), step)
            w.flush()
            with connect(store.address, timeout=DEADLINE) as client:
                runs = {r.name: r for r in client.list_runs()}
                assert runs["bad"].damaged and not runs["bad"].open
                assert "damaged" in runs["bad"].problem
                assert runs["good"].frames == {"group['x']": 10} and not runs["good"].damaged
                assert runs["live"].open and runs["live"].frames == {"group['x']": 5}
                with pytest.raises(E.RunDamagedError):
                    client.open_run("bad")
                with client.open_run("good") as reader:
                    assert reader.focus_group("group['x']")[-1].tolist() == [9.0] * 4
                # Listed again: the damaged file is remembered, not opened again (the
                # summary is keyed by its size and modification time).
                assert client.list_runs()[0].damaged
            assert serving(store.address)
            for step in range(5, 10):
                w.log(np.full(4, step, np.float32), step)
            w.flush()
    finally:
        assert store.stop() == 0
    with h5py.File(data / "live.h5", "r") as f:
        assert f["x/x"].shape[0] >= 10


def test_listing_survives_entries_that_are_no_runs(tmp_path):
    data = tmp_path / "data"
    write_local(data / "a.h5")
    write_local(data / "z" / "b.h5")
    (data / "empty.h5").write_bytes(b"")
    (data / "text.h5").write_text("not hdf5")
    with h5py.File(data / "foreign.h5", "w") as f:
        f["x"] = np.arange(3)
    outside = tmp_path / "outside.h5"
    write_local(outside)
    (data / "escape.h5").symlink_to(outside)  # leads out of the data directory
    (data / "dir.h5").mkdir()
    store = start_store(data)
    try:
        with connect(store.address, timeout=DEADLINE) as client:
            runs = {r.name: r for r in client.list_runs()}
        assert sorted(runs) == ["a", "empty", "escape", "foreign", "text", "z/b"]
        assert not runs["a"].damaged and runs["z/b"].frames == {"group['x']": 10}
        for name in ("empty", "escape", "foreign", "text"):
            assert runs[name].damaged, name
            assert runs[name].problem, name
        assert "outside" in runs["escape"].problem
        assert "not a trajstore run" in runs["foreign"].problem
    finally:
        assert store.stop() == 0


def test_listing_pages_runs_whose_metadata_passes_the_message_limit(tmp_path):
    data = tmp_path / "data"
    blob = "m" * (150 << 10)
    for i in range(8):  # 1.2 MB of metadata: more than one message of 1 MiB
        write_local(data / f"run{i}.h5", frames=2, metadata={"blob": blob, "i": i})
    write_local(data / "huge.h5", frames=2, metadata={"blob": "h" * (1200 << 10)})
    store = start_store(data, "--max-message-bytes", str(1 << 20))
    try:
        with connect(store.address, timeout=DEADLINE) as client:
            runs = client.list_runs()
        assert [r.name for r in runs] == ["huge"] + [f"run{i}" for i in range(8)]
        assert [r.metadata["i"] for r in runs[1:]] == list(range(8))
        assert all(r.metadata["blob"] == blob for r in runs[1:])
        assert runs[0].metadata == {} and "left out" in runs[0].problem and not runs[0].damaged
        with grpc.insecure_channel(store.address) as channel:
            stub = qpb_grpc.QueryServiceStub(channel)
            page = stub.ListRuns(qpb.ListRunsRequest(page_size=3, prefix="run"))
            assert [r.name for r in page.runs] == ["run0", "run1", "run2"]
            assert page.next_page_token == "run2"
            page = stub.ListRuns(qpb.ListRunsRequest(page_size=3, page_token="run6", prefix="run"))
            assert [r.name for r in page.runs] == ["run7"] and page.next_page_token == ""
            with pytest.raises(grpc.RpcError) as refused:
                stub.ListRuns(qpb.ListRunsRequest(page_size=1_000_000))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        assert store.stop() == 0


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def start_half_block(address: str, run: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, str(CLIENTS / "half_block.py"), "--address", address, "--run", run],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "sent"
    return process


def test_a_killed_writers_session_is_reaped(tmp_path):
    data = tmp_path / "data"
    store = start_store(data, "--lease-seconds", "2", "--max-open-runs", "2")
    try:
        before = rss_bytes(store.process.pid)
        writers = [start_half_block(store.address, f"dead{i}") for i in range(2)]
        held = rss_bytes(store.process.pid)
        assert held - before > 64 << 20  # two 48 MiB halves of frames are held
        for writer in writers:
            writer.kill()
            writer.wait(30)
        # Its followers are told: follow() of a reaped run ends (it hung before).
        followed: list[object] = []
        with connect(store.address, timeout=DEADLINE) as client:
            assert {r.name for r in client.list_runs() if r.open} == {"dead0", "dead1"}
            with client.open_run("dead0") as reader:
                group = reader.focus_group("group['x']")
                follower = threading.Thread(
                    target=lambda: followed.extend(group.follow()), daemon=True
                )
                follower.start()
                wait_until(lambda: not any(r.open for r in client.list_runs()), timeout=DEADLINE)
                follower.join(DEADLINE)
                assert not follower.is_alive() and followed == []
        # Room for new runs again (max_open_runs was reached by the dead sessions) ...
        with RemoteStorageWriter(store.address, "new", config(), np.zeros(4, np.float32)) as w:
            w.log(np.zeros(4, np.float32), 0)
        # ... and the half-received blocks are freed.
        wait_until(lambda: rss_bytes(store.process.pid) < held - (64 << 20), timeout=DEADLINE)
    finally:
        assert store.stop() == 0
    for name in ("dead0", "dead1"):
        with h5py.File(data / f"{name}.h5", "r") as f:  # closed cleanly, no frames
            assert f["x"].attrs["frames"] == 0


OPENER = """
import sys, threading
import numpy as np
from trajstore import EveryNStep, RemoteStorageWriter, WriterGroupConfig, view
config = {"x": WriterGroupConfig(view(lambda s: s), EveryNStep(1))}
def work(k):
    for i in range(1000):
        try:
            with RemoteStorageWriter(sys.argv[1], f"r{k}-{i}", config, np.zeros(4, np.float32),
                                     timeout=5) as w:
                w.log(np.zeros(4, np.float32), 0)
        except Exception:
            return
threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
for t in threads: t.start()
print("started", flush=True)
for t in threads: t.join()
"""


def test_sigterm_leaves_every_run_file_clean(tmp_path):
    """Runs opening while the store shuts down are closed too (their flags were left set)."""
    rng = random.Random(16)
    for attempt in range(4):
        data = tmp_path / f"data{attempt}"
        store = start_store(data)
        opener = subprocess.Popen(
            [sys.executable, "-c", OPENER, store.address], stdout=subprocess.PIPE, text=True
        )
        try:
            assert opener.stdout is not None and opener.stdout.readline().strip() == "started"
            wait_until(lambda d=data: len(list(d.glob("*.h5"))) >= 4)
            threading.Event().wait(rng.uniform(0, 0.5))
            assert store.stop(signal.SIGTERM) == 0
        finally:
            opener.kill()
            opener.wait(30)
        for path in data.glob("*.h5"):
            with h5py.File(path, "r"):  # refused if its SWMR status flags were left set
                pass
        shutil.rmtree(data)


def test_store_restart_keeps_listing_after_damage(tmp_path):
    """A damaged file is reported again after a restart; nothing else changes."""
    data = tmp_path / "data"
    write_local(data / "ok.h5")
    write_local(data / "bad.h5")
    flip_superblock_bit(data / "bad.h5")
    before = (data / "bad.h5").read_bytes()
    for _ in range(2):
        store = start_store(data)
        try:
            with connect(store.address, timeout=DEADLINE) as client:
                runs = {r.name: r for r in client.list_runs()}
            assert runs["bad"].damaged and not runs["ok"].damaged
        finally:
            assert store.stop() == 0
    assert (data / "bad.h5").read_bytes() == before  # reported, never "repaired"
    assert os.path.exists(data / "ok.h5")


def test_hostile_clients_and_damaged_files_affect_only_themselves(tmp_path):
    """Randomized: well-behaved writers and followers finish with every frame once meanwhile."""
    rng = random.Random(1616)
    data = tmp_path / "data"
    victims = [f"victims/v{i}" for i in range(4)]
    for victim in victims:
        write_local(data / f"{victim}.h5")
    spoiled = {v: damage(data / f"{v}.h5", rng) for v in victims[:3]}
    junk = plant_junk(data, tmp_path / "outside.h5")
    store = start_store(data, "--lease-seconds", "2")
    frames = 300
    hostiles = [Hostile(store.address, seed, victims) for seed in range(2)]
    try:
        writers = {
            f"good/w{i}": start_live_writer(store.address, f"good/w{i}", frames) for i in range(3)
        }
        for hostile in hostiles:
            hostile.start()
        followed: dict[str, list[int]] = {run: [] for run in writers}

        def follow(run: str) -> None:
            with connect(store.address, timeout=DEADLINE) as client:
                wait_until(lambda: any(r.name == run for r in client.list_runs()))
                with client.open_run(run) as reader:
                    for frame in reader.focus_group("group['x']").follow():
                        followed[run].append(int(frame["b"]))

        followers = [threading.Thread(target=follow, args=(run,)) for run in writers]
        for follower in followers:
            follower.start()
        for run, writer in writers.items():
            _, err = writer.communicate(timeout=300)
            assert writer.returncode == 0, (run, err)
        for follower in followers:
            follower.join(DEADLINE)
            assert not follower.is_alive()
        with connect(store.address, timeout=DEADLINE) as client:
            runs = {r.name: r for r in client.list_runs()}
        for victim, how in spoiled.items():
            assert runs[victim].damaged, (victim, how)
        assert not runs[victims[3]].damaged and runs[victims[3]].frames == {"group['x']": 10}
        for name in junk:
            assert runs[name].damaged, name
        for run in writers:
            assert runs[run].frames == {"group['x']": frames} and not runs[run].open
            assert followed[run] == list(range(frames)), run
    finally:
        for hostile in hostiles:
            hostile.stop()
        for hostile in hostiles:
            hostile.join(60)
        assert store.stop() == 0
    assert all(h.calls > 0 for h in hostiles)
    assert [u for h in hostiles for u in h.untyped] == []
    for run in writers:
        assert_every_frame_once(data / f"{run}.h5", frames)
