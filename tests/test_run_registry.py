"""The store's writer sessions: a run counts as written until its writer has closed."""

from __future__ import annotations

from trajstore.schema import GroupSpec, LeafSpec, RunSpec
from trajstore.server.config import ServerConfig
from trajstore.server.files import RunFiles
from trajstore.server.sessions import RunRegistry


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
