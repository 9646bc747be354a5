"""Whole chunks written with write_direct_chunk (compressed on a pool, or raw) read back exactly."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

import h5py
import hdf5plugin  # noqa: F401 - registers the zstd filter for the plain h5py reads
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trajstore import Compression
from trajstore.errors import FrameMismatchError
from trajstore.schema import GroupSpec, LeafSpec, RunSpec
from trajstore.store import layout
from trajstore.store.background import BackgroundWriter
from trajstore.store.writer import RunFileWriter


class CountingPool(ThreadPoolExecutor):
    """A real pool that counts the chunks given to it and the threads that gave them."""

    chunks = 0
    threads: ClassVar[set[str]] = set()

    def submit(self, fn, /, *args, **kwargs):
        CountingPool.chunks += 1
        CountingPool.threads.add(threading.current_thread().name)
        return super().submit(fn, *args, **kwargs)


POOL = CountingPool(4)
CHUNK = 24_000  # bytes: 4 frames of pos per chunk


def spec(compression):
    leaves = (LeafSpec("['pos']", "float32", (500, 3)), LeafSpec("['n']", "int64", ()))
    return RunSpec(groups=(GroupSpec("group['x']", True, leaves, compression=compression),))


def frames(start, count):
    pos = np.arange(start, start + count, dtype=np.float32)[:, None, None] * np.ones((500, 3))
    return [pos.astype(np.float32), np.arange(start, start + count, dtype=np.int64)]


def write_plan(writer, plan, make=frames, *, prepare_ahead=False):
    """Write blocks ``(start, count)`` of ``make(start, count)``; return the length.

    A start past the end is pulled back to it (no gaps). ``prepare_ahead``:
    start every block's compression (``prepare_block``) before writing the
    first, as a writer with a queue of blocks does.
    """
    length, blocks = 0, []
    for start, count in plan:
        start = min(start, length)  # no gaps: a rewind or the next frames
        blocks.append((start, count, make(start, count)))
        length = start + count
    prepared = [
        writer.prepare_block(0, start, count, leaves) if prepare_ahead else None
        for start, count, leaves in blocks
    ]
    for (start, count, leaves), ready in zip(blocks, prepared, strict=True):
        writer.write_block(0, start, count, leaves, ready)
    writer.close()
    return length


# Blocks as (start, count): in order, with rewinds to any earlier frame.
blocks = st.lists(st.tuples(st.integers(0, 40), st.integers(1, 40)), min_size=1, max_size=8)


@pytest.mark.parametrize(
    "compression",
    [
        Compression("zstd", 3, target_chunk_bytes=CHUNK),
        Compression("gzip", 4, shuffle=False, target_chunk_bytes=CHUNK),
        Compression("zstd", 1, shuffle=False, target_chunk_bytes=CHUNK),
    ],
    ids=["zstd-shuffle", "gzip", "zstd"],
)
@settings(max_examples=25, deadline=None)
@given(plan=blocks)
def test_pool_and_hdf5_filters_write_the_same_frames(tmp_path_factory, compression, plan):
    root = tmp_path_factory.mktemp("pool")
    length = 0
    for name, pool, ahead in (
        ("filters.h5", None, False),
        ("pool.h5", POOL, False),
        ("ahead.h5", POOL, True),  # compression of every block started before any write
    ):
        writer = RunFileWriter(root / name, spec(compression), chunk_pool=pool)
        length = write_plan(writer, plan, prepare_ahead=ahead)
    with h5py.File(root / "filters.h5", "r") as a:
        for name in ("pool.h5", "ahead.h5"):
            with h5py.File(root / name, "r") as b:
                for leaf in ("pos", "n"):
                    expected = a["x"][leaf][:]
                    np.testing.assert_array_equal(b["x"][leaf][:], expected)
                n = b["x"]["n"][:]
                np.testing.assert_array_equal(n, np.arange(length))


def test_whole_aligned_chunks_go_through_the_pool(tmp_path):
    before = CountingPool.chunks
    writer = RunFileWriter(
        tmp_path / "r.h5", spec(Compression(target_chunk_bytes=CHUNK)), chunk_pool=POOL
    )
    writer.write_block(0, 0, 16, frames(0, 16))
    writer.close()
    assert CountingPool.chunks - before >= 4  # pos: four chunks of four frames
    with h5py.File(tmp_path / "r.h5", "r") as f:
        assert f["x"]["pos"].chunks[0] == 4
        np.testing.assert_array_equal(f["x"]["pos"][:], frames(0, 16)[0])


def test_blocks_queued_to_a_background_writer_are_compressed_from_the_submitting_thread(
    tmp_path,
):
    # The pool works ahead of the writing thread: compression starts when a
    # block is queued, not when its write comes up.
    CountingPool.threads.clear()
    run = RunFileWriter(
        tmp_path / "r.h5", spec(Compression(target_chunk_bytes=CHUNK)), chunk_pool=POOL
    )
    writer = BackgroundWriter(run)
    batch = layout.batch_frames(run.spec.groups[0])
    for start in range(0, 4 * batch, batch):
        writer.submit_block(0, start, batch, frames(start, batch))
    writer.close()
    assert threading.current_thread().name in CountingPool.threads
    with h5py.File(tmp_path / "r.h5", "r") as f:
        pos = f["x"]["pos"]
        assert pos.chunks[0] == 4
        np.testing.assert_array_equal(pos[:], frames(0, 4 * batch)[0])


def test_a_block_that_does_not_fit_is_not_prepared_and_its_write_raises(tmp_path):
    run = RunFileWriter(
        tmp_path / "r.h5", spec(Compression(target_chunk_bytes=CHUNK)), chunk_pool=POOL
    )
    pos, n = frames(0, 8)
    wrong = [pos[:, :400], n]  # frames of the wrong shape
    assert run.prepare_block(0, 0, 8, wrong) is None
    assert run.prepare_block(5, 0, 8, [pos, n]) is None  # no such group
    with pytest.raises(FrameMismatchError):
        run.write_block(0, 0, 8, wrong)
    run.close()


def test_prepare_after_the_pool_shut_down_leaves_the_write_to_report_it(tmp_path):
    pool = ThreadPoolExecutor(2)
    run = RunFileWriter(
        tmp_path / "r.h5", spec(Compression(target_chunk_bytes=CHUNK)), chunk_pool=pool
    )
    pool.shutdown()
    assert run.prepare_block(0, 0, 8, frames(0, 8)) is None
    with pytest.raises(RuntimeError, match="shutdown"):
        run.write_block(0, 0, 8, frames(0, 8))
    run.close()


@settings(max_examples=40, deadline=None)
@given(
    plan=st.lists(
        st.tuples(st.sampled_from([0, 1, 5, 16, 32, 64]), st.sampled_from([1, 7, 16, 32, 64])),
        min_size=1,
        max_size=8,
    )
)
def test_unfiltered_chunks_written_directly_read_back_as_written(tmp_path_factory, plan):
    # Chunks of 32 whole frames without filters: aligned blocks skip HDF5's chunk cache.
    path = tmp_path_factory.mktemp("raw") / "raw.h5"
    length = write_plan(RunFileWriter(path, spec(None)), plan)
    expected = frames(0, length)
    with h5py.File(path, "r") as f:
        group = f["x"]
        assert group["pos"].chunks[0] == 32
        np.testing.assert_array_equal(group["pos"][:], expected[0])
        np.testing.assert_array_equal(group["n"][:], expected[1])


def slab_frames(shape, dtype, start, count):
    """Frames whose every element differs (frame index and position), as ``dtype``."""
    size = int(np.prod(shape))
    values = np.arange(start, start + count)[:, None] * 1_000_003 + np.arange(size)
    return values.reshape(count, *shape).astype(dtype)


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [
        ((21_846, 3), "float32"),  # one whole chunk of 21 845 rows and a one-row edge
        ((43_690, 3), "float32"),  # exactly two chunks
        ((200_001,), "int16"),  # 1-d: chunks of 131 072 elements and an edge
        ((70_000, 2), "<f8"),  # chunks of 16 384 rows
    ],
)
@settings(max_examples=15, deadline=None)
@given(plan=st.lists(st.tuples(st.integers(0, 6), st.integers(1, 5)), min_size=1, max_size=6))
def test_slabs_of_large_frames_written_directly_read_back_as_written(
    tmp_path_factory, shape, dtype, plan
):
    # Frames above the chunk target are chunked in slabs of rows; without filters
    # each slab is written straight from the block, the last one padded.
    leaves = (LeafSpec("['big']", np.dtype(dtype).name, shape), LeafSpec("['n']", "int64", ()))
    run = RunSpec(groups=(GroupSpec("group['x']", True, leaves),))
    path = tmp_path_factory.mktemp("slabs") / "slabs.h5"

    def make(start, count):
        return [slab_frames(shape, dtype, start, count), np.arange(start, start + count)]

    length = write_plan(RunFileWriter(path, run), plan, make)
    with h5py.File(path, "r") as f:
        big = f["x"]["big"]
        assert big.chunks[0] == 1 and big.chunks[1] < shape[0]  # slabs, not whole frames
        np.testing.assert_array_equal(big[:], slab_frames(shape, dtype, 0, length))
        rows = big.chunks[1]
        across = slice(rows - 3, rows + 3)  # a read across the first chunk boundary
        np.testing.assert_array_equal(
            big[length - 1, across], slab_frames(shape, dtype, length - 1, 1)[0, across]
        )
