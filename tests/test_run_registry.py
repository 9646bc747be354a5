"""The store's writer sessions: a run counts as written until its writer has closed."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from trajstore import errors as E
from trajstore.schema import GroupSpec, LeafSpec, RunSpec
from trajstore.server.config import Limits, ServerConfig
from trajstore.server.files import RunFiles
from trajstore.server.sessions import BlockHeader, RunRegistry

from servers import wait_until


def test_a_run_counts_as_open_until_its_writer_has_closed(tmp_path):
    registry = RunRegistry(ServerConfig(data_dir=tmp_path), RunFiles(tmp_path))
    spec = RunSpec(groups=(GroupSpec("group", True, (LeafSpec("", "float32", (4,)),)),))
    session = registry.open("r", "create", spec)
    seen_while_closing = []
    close_writer = session.writer.close

    def close_and_look():
        # The final flush happens here; until it is done the run's frame
        # count is not final, so reads must not treat the run as settled.
        seen_while_closing.append(registry.is_open("r"))
        close_writer()

    session.writer.close = close_and_look
    registry.close(session.id)
    assert seen_while_closing == [True]
    assert not registry.is_open("r")
    again = registry.open("r", "append", spec)  # a closed run opens again
    registry.close(again.id)
    assert not registry.is_open("r")


def test_opening_a_run_whose_last_writer_is_still_closing_waits_for_it(tmp_path):
    registry = RunRegistry(ServerConfig(data_dir=tmp_path), RunFiles(tmp_path))
    spec = RunSpec(groups=(GroupSpec("group", True, (LeafSpec("", "float32", (4,)),)),))
    first = registry.open("r", "create", spec)
    frames = np.arange(8, dtype=np.float32).reshape(2, 4)
    first.receive(BlockHeader(1, 0, 0, 2, frames.nbytes), 0, memoryview(frames).cast("B"), 2)
    events: list[str] = []
    failures: list[BaseException] = []

    def open_again():
        try:
            second = registry.open("r", "append", spec)
            events.append(f"opened at frame {second.writer.file.frames[0]}")
            registry.close(second.id)
        except BaseException as e:  # the test reports whatever it was
            failures.append(e)

    close_writer = first.writer.close
    opener = threading.Thread(target=open_again)

    def close_while_another_opens():
        opener.start()
        opener.join(1.0)  # gives the other writer time to try; it must wait for this close
        close_writer()
        events.append("closed")

    first.writer.close = close_while_another_opens
    registry.close(first.id)
    opener.join(60)
    assert not failures, failures
    assert events == ["closed", "opened at frame 2"]


def test_a_writer_held_up_by_a_slow_disk_keeps_its_lease(tmp_path):
    frame = np.ones(8, np.float32)  # 32 bytes: a second one waits for room
    config = ServerConfig(
        data_dir=tmp_path, lease_seconds=0.5, limits=Limits(max_pending_bytes_per_run=40)
    )
    registry = RunRegistry(config, RunFiles(tmp_path))
    spec = RunSpec(groups=(GroupSpec("group", True, (LeafSpec("", "float32", (8,)),)),))
    session = registry.open("r", "create", spec)
    disk = threading.Event()  # the disk answers once the test says so
    write_block = session.writer.file.write_block

    def slow_write_block(*args, **kwargs):
        assert disk.wait(60), "the test never let the disk answer"
        write_block(*args, **kwargs)

    session.writer.file.write_block = slow_write_block
    failures: list[BaseException] = []

    def send():  # as the ingest thread does: one block after the other
        try:
            for block in (1, 2):
                view = memoryview(frame).cast("B")
                session.receive(BlockHeader(block, 0, block - 1, 1, frame.nbytes), 0, view, 1)
        except BaseException as e:  # the test reports whatever it was
            failures.append(e)

    sender = threading.Thread(target=send)
    sender.start()
    wait_until(lambda: session.writer._waiting == 1)  # block 2 waits for room
    threading.Event().wait(1.0)  # twice the lease, all of it spent waiting for the disk
    with pytest.raises(E.RunLockedError):
        registry.open("r", "overwrite", spec)  # the lease did not lapse meanwhile
    disk.set()
    sender.join(60)
    assert not failures, failures
    registry.close(session.id)
    assert session.writer.durable_frames == [2]
