"""Frames waiting to be written or sent hold few objects the garbage collector tracks.

Objects that live through several collections make Python's full collections
(which walk every object of the process, JAX's modules included) more
frequent: thousands of buffered scalar frames must not be thousands of them.
"""

from __future__ import annotations

import gc
import time

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from trajstore import EveryNStep, WriterGroupConfig, view
from trajstore.client.batching import SMALL_FRAME_BYTES, block_buffers
from trajstore.groups import extract_frames, prepare_groups
from trajstore.schema import GroupSpec, LeafSpec, RunSpec
from trajstore.store.background import BackgroundWriter
from trajstore.store.writer import RunFileWriter

leaf_shapes = st.sampled_from([(), (3,), (2, 5), (SMALL_FRAME_BYTES // 4 + 1,)])
leaf_dtypes = st.sampled_from([np.float32, np.int64, np.uint8, np.float64])


@st.composite
def blocks(draw):
    """Frames of one block: ``count`` frames of the same leaves."""
    leaves = draw(st.lists(st.tuples(leaf_shapes, leaf_dtypes), min_size=1, max_size=3))
    count = draw(st.integers(1, 12))
    return [tuple(draw(hnp.arrays(dtype, shape)) for shape, dtype in leaves) for _ in range(count)]


@settings(max_examples=60, deadline=None)
@given(frames=blocks())
def test_block_buffers_hold_the_block_layout(frames):
    buffers = block_buffers(frames)
    expected = b"".join(frame[i].tobytes() for i in range(len(frames[0])) for frame in frames)
    assert b"".join(np.ascontiguousarray(b).tobytes() for b in buffers) == expected
    # Small frames joined into one buffer per leaf, large ones as they are.
    per_leaf = [1 if f.nbytes <= SMALL_FRAME_BYTES else len(frames) for f in frames[0]]
    assert len(buffers) == (sum(per_leaf) if len(frames) > 1 else len(frames[0]))


def test_a_block_of_thousands_of_scalar_frames_is_one_buffer_per_leaf():
    frames = [
        (np.float32(i) * np.ones((), np.float32), np.int64(i) * np.ones(3, np.int64))
        for i in range(4096)
    ]
    buffers = block_buffers(frames)
    assert [b.shape for b in buffers] == [(4096,), (4096, 3)]
    np.testing.assert_array_equal(buffers[0], np.arange(4096, dtype=np.float32))


def test_extracted_frames_are_untracked_by_the_garbage_collector_after_a_pass():
    state = {"a": np.float32(1.0), "b": np.zeros(3, np.float32)}
    config = {"s": WriterGroupConfig(view(lambda s: s), EveryNStep(1))}
    groups, _ = prepare_groups(config, state, 10, compile_views=False)
    frames = [extract_frames(groups, state, step)[0] for step in range(10)]
    gc.collect()
    assert not any(gc.is_tracked(leaves) for _, _, leaves in frames)


def test_single_frames_buffered_by_the_background_writer_are_untracked(tmp_path):
    leaves = tuple(LeafSpec(f"['{k}']", "float32", ()) for k in "abc")
    spec = RunSpec(groups=(GroupSpec("group['s']", True, leaves),))
    writer = BackgroundWriter(RunFileWriter(tmp_path / "r.h5", spec))
    try:
        for i in range(1000):  # fewer than a block: they wait in the writer's buffer
            writer.submit_frame(0, i, [np.full((), i, np.float32)] * 3)
        buffered = writer._buffers[0].blocks
        deadline = time.monotonic() + 30
        while len(buffered) < 1000 and time.monotonic() < deadline:  # the thread took them
            time.sleep(0.01)
        gc.collect()
        assert len(buffered) == 1000
        assert not any(gc.is_tracked(block) for block in buffered)
    finally:
        writer.close()
    reopened = RunFileWriter(tmp_path / "r.h5", spec, mode="append")
    assert reopened.frames == [1000]  # and all were written at close
    reopened.close()
