"""spawn_store: a real ``trajstore serve`` process, its address, and a clear error when it fails."""

from __future__ import annotations

import signal

import numpy as np
import pytest

from trajstore import RemoteStorageReader, RemoteStorageWriter
from trajstore import errors as E
from trajstore.server.launch import spawn_store

from helpers import md_config, md_state


def _stop(process) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0


def test_a_spawned_store_takes_a_run_at_the_address_it_printed(tmp_path):
    process, address = spawn_store(tmp_path / "data")
    try:
        state = md_state()
        with RemoteStorageWriter(address, "p/r", md_config(every=1), state, 3) as log:
            for step in range(3):
                log.log(state, step)
        with RemoteStorageReader(address, "p/r") as reader:
            assert len(reader.focus_group("group['energy']")) == 3
    finally:
        _stop(process)


def test_several_processes_give_every_address(tmp_path):
    process, address = spawn_store(tmp_path / "data", "--processes", "2")
    try:
        assert len(address.split(",")) == 2
        with pytest.raises(E.RunNotFoundError):  # routed to a process, which answered
            with RemoteStorageReader(address, "none/yet"):
                pass
    finally:
        _stop(process)


def test_a_store_that_cannot_start_is_a_clear_error(tmp_path):
    not_a_directory = tmp_path / "file"
    not_a_directory.write_bytes(np.zeros(4).tobytes())
    with pytest.raises(RuntimeError, match="exited with"):
        spawn_store(not_a_directory)
