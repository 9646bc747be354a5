"""The store's read handles: shared by reads, dropped for writers, bounded in number."""

from __future__ import annotations

import threading

import pytest

from trajstore import HDF5StorageWriter
from trajstore import errors as E
from trajstore.server.files import RunFiles

from helpers import md_config, md_state, run_in_threads
from servers import wait_until


def make_run(data_dir, name):
    with HDF5StorageWriter(data_dir / f"{name}.h5", md_config(), md_state(), 2) as writer:
        writer.log(md_state(), 0)


def test_asking_for_many_runs_that_do_not_exist_remembers_a_bounded_number(tmp_path):
    files = RunFiles(tmp_path, max_cached=4)
    for i in range(200):
        with pytest.raises(E.RunNotFoundError), files.reading(f"absent-{i}"):
            pass
    assert len(files) <= 4


def test_idle_runs_beyond_the_bound_are_forgotten_and_reopen_on_demand(tmp_path):
    for name in "abcdef":
        make_run(tmp_path, name)
    files = RunFiles(tmp_path, max_cached=2)
    with files.reading("a") as a:
        for name in "bcdef":  # a stays open: it is being read
            with files.reading(name) as handle:
                assert handle.frames(0) == 1
        assert a.frames(0) == 1
        assert len(files) <= 3
    assert len(files) <= 2
    for name in "abcdef":
        with files.reading(name) as handle:
            assert handle.frames(0) == 1


def test_the_run_read_most_recently_is_the_last_forgotten(tmp_path):
    for name in "abc":
        make_run(tmp_path, name)
    files = RunFiles(tmp_path, max_cached=2)

    def handle_of(name):
        with files.reading(name) as handle:
            return handle

    first = handle_of("a")
    handle_of("b")
    assert handle_of("a") is first  # read again: now b is the least recent
    handle_of("c")  # one too many: b is forgotten, a stays open
    assert handle_of("a") is first


def test_a_writer_waits_for_reads_and_the_next_read_gets_a_new_handle(tmp_path):
    make_run(tmp_path, "r")
    files = RunFiles(tmp_path, max_cached=1)
    order = []
    with files.reading("r") as before:

        def write():
            with files.writing("r"):
                order.append("writing")

        writer = threading.Thread(target=write)
        writer.start()
        wait_until(lambda: files._entries["r"].writers_waiting == 1)  # it waits for this read
        order.append("read done")
    writer.join(30)
    assert order == ["read done", "writing"]
    with files.reading("r") as after:
        assert after is not before and after.frames(0) == 1


def test_reads_and_writes_of_many_runs_from_many_threads_keep_the_bound(tmp_path):
    names = [f"run-{i}" for i in range(12)]
    for name in names:
        make_run(tmp_path, name)
    files = RunFiles(tmp_path, max_cached=3)

    def work(seed):
        for k in range(150):
            name = names[(seed * 7 + k) % len(names)]
            if k % 25 == 0:
                with files.writing(name):
                    pass
            else:
                with files.reading(name) as handle:
                    assert handle.frames(0) == 1

    failures = run_in_threads(work, 6)
    assert not failures, failures
    assert len(files) <= 3


def test_reads_that_start_while_a_writer_waits_wait_for_it(tmp_path):
    make_run(tmp_path, "r")
    files = RunFiles(tmp_path)
    order = []

    def write():
        with files.writing("r"):
            order.append("writing")

    def read():
        with files.reading("r") as handle:
            order.append(f"read {handle.frames(0)} frame")

    with files.reading("r"):
        writer = threading.Thread(target=write)
        writer.start()
        wait_until(lambda: files._entries["r"].writers_waiting == 1)
        reader = threading.Thread(target=read)  # a steady stream of reads cannot starve it
        reader.start()
        reader.join(0.5)
        order.append("first read done")
    writer.join(30)
    reader.join(30)
    assert order == ["first read done", "writing", "read 1 frame"]


def test_a_writer_gives_up_after_its_timeout_and_leaves_reads_as_they_were(tmp_path):
    make_run(tmp_path, "r")
    files = RunFiles(tmp_path)
    with files.reading("r") as held:
        with pytest.raises(E.RunLockedError, match="being read"), files.writing("r", timeout=0.2):
            raise AssertionError("opened for writing while a read held the run")
        assert files._entries["r"].writers_waiting == 0
        with files.reading("r") as again:  # reads are not held back by the writer that left
            assert again is held and held.frames(0) == 1
    with files.writing("r", timeout=30):  # the reads ended: writers get in
        pass
