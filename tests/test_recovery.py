"""Recovering a run file left open by a killed writer (status flags set)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

from trajstore import EveryNStep, HDF5StorageReader, HDF5StorageWriter, WriterGroupConfig, view
from trajstore.store.recovery import clear_status_flags, lookup3, rebuild

CONFIG = {"x": WriterGroupConfig(view(lambda s: s), EveryNStep(1))}

KILLED_WRITER = textwrap.dedent(
    """
    import sys, time, numpy as np
    from trajstore import EveryNStep, HDF5StorageWriter, WriterGroupConfig, view
    config = {"x": WriterGroupConfig(view(lambda s: s), EveryNStep(1))}
    w = HDF5StorageWriter(sys.argv[1], config, np.zeros(3, np.float32), 100,
                          compile_views=False).__enter__()
    for i in range(100_000):
        w.log(np.full(3, i, np.float32), i)
        if i == 40:
            w.flush()
            print("durable", flush=True)
    time.sleep(600)
    """
)


@pytest.fixture
def killed_file(tmp_path):
    """A run file whose writer was SIGKILLed after 41 durable frames."""
    path = tmp_path / "killed.h5"
    writer = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout is not None
    assert writer.stdout.readline().strip() == "durable"
    time.sleep(0.2)
    writer.send_signal(signal.SIGKILL)
    writer.wait(60)
    with pytest.raises(OSError, match="already open for write"):
        h5py.File(path, "r+")
    return path


def test_lookup3_reproduces_hdf5s_superblock_checksum(tmp_path):
    with h5py.File(tmp_path / "f.h5", "w", libver=("v110", "latest")) as f:
        f["x"] = np.arange(3)
    raw = (tmp_path / "f.h5").read_bytes()[:48]
    assert raw[8] == 3 and raw[9] == 8
    assert lookup3(raw[:44]) == int.from_bytes(raw[44:48], "little")


def assert_resumable(path):
    with HDF5StorageReader(path) as reader:
        durable = len(reader.focus_group("group['x']"))
    assert durable >= 41
    with HDF5StorageWriter(
        path, CONFIG, np.zeros(3, np.float32), 100, mode="append", compile_views=False
    ) as log:
        log.log(np.full(3, durable, np.float32), durable)
    with HDF5StorageReader(path) as reader:
        np.testing.assert_array_equal(
            reader.focus_group("group['x']")[:, 0], np.arange(durable + 1)
        )
    h5py.File(path, "r").close()  # a plain open works again


def test_append_clears_the_flags_in_place(killed_file):
    size = killed_file.stat().st_size
    assert_resumable(killed_file)  # goes through clear_status_flags
    assert killed_file.stat().st_size <= size + (1 << 20)  # not rewritten


def test_clearing_refuses_what_it_cannot_verify(tmp_path, killed_file):
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not an hdf5 file at all, just some bytes" * 4)
    assert not clear_status_flags(garbage)
    broken = tmp_path / "broken.h5"
    data = bytearray(killed_file.read_bytes())
    data[44] ^= 0xFF  # a checksum that does not verify
    broken.write_bytes(bytes(data))
    assert not clear_status_flags(broken)
    assert broken.read_bytes() == bytes(data)  # untouched


def test_rebuild_copies_the_durable_frames(killed_file):
    rebuild(killed_file)
    assert_resumable(killed_file)
