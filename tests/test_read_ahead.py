"""``read_ahead``: the next piece is read on a thread of its own while the last is used."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trajstore.read_ahead import read_ahead


class Source:
    """An iterator that records how far it was read and whether it was closed."""

    def __init__(self, items, fail_after=None):
        self.items = items
        self.fail_after = fail_after
        self.produced = 0
        self.closed = threading.Event()

    def __iter__(self):
        try:
            for item in self.items:
                if self.produced == self.fail_after:
                    raise KeyError("the source failed")
                self.produced += 1
                yield item
        finally:
            self.closed.set()


@settings(max_examples=50, deadline=None)
@given(items=st.lists(st.integers(), max_size=30), depth=st.integers(1, 4))
def test_yields_every_item_in_order_never_more_than_depth_ahead(items, depth):
    source = Source(items)
    received = []
    for item in read_ahead(iter(source), depth):
        # one in the queue per depth, one being handed over, one being produced
        assert source.produced - len(received) <= depth + 2
        received.append(item)
    assert received == items
    assert source.closed.is_set()


@settings(max_examples=30, deadline=None)
@given(items=st.lists(st.integers(), min_size=1, max_size=20), data=st.data())
def test_an_error_arrives_after_the_items_before_it(items, data):
    fail_after = data.draw(st.integers(0, len(items) - 1))
    received = []
    with pytest.raises(KeyError, match="the source failed"):
        for item in read_ahead(iter(Source(items, fail_after))):
            received.append(item)
    assert received == items[:fail_after]


def test_closing_early_stops_and_closes_the_source():
    source = Source(range(1_000_000))
    threads = threading.active_count()
    pieces = read_ahead(iter(source))
    assert next(pieces) == 0
    pieces.close()  # the client went away
    assert source.closed.is_set()
    assert source.produced <= 4
    assert threading.active_count() <= threads  # the reading thread has ended
