"""The store's writer sessions: a run counts as written until its writer has closed."""

from __future__ import annotations

import threading

import numpy as np

from trajstore.schema import GroupSpec, LeafSpec, RunSpec
from trajstore.server.config import ServerConfig
from trajstore.server.files import RunFiles
from trajstore.server.sessions import BlockHeader, RunRegistry


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
