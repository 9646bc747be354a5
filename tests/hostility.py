"""What careless operators and hostile clients do to a store: for tests and ``scripts/soak``.

- :func:`damage` spoils a closed run file the way disks and people do (a bit
  flipped in its metadata, a truncation, garbage over its start);
- :func:`plant_junk` leaves entries in a data dir that are no runs;
- :class:`Hostile` is a thread of hostile-but-valid calls -- malformed
  schemas, absurd numbers, idle streams, blocks abandoned halfway, reads of
  damaged runs -- each of which must get a typed error (or be served) and
  never take the store from anyone else.
"""

from __future__ import annotations

import contextlib
import random
import threading
from pathlib import Path

import grpc
import h5py
import numpy as np
from grpc_reflection.v1alpha import reflection_pb2_grpc

from trajstore import wire
from trajstore.client.channel import open_channel
from trajstore.schema import GroupSpec, LeafSpec, RunSpec
from trajstore.v1 import ingest_pb2 as pb
from trajstore.v1 import ingest_pb2_grpc as pb_grpc
from trajstore.v1 import query_pb2 as qpb
from trajstore.v1 import query_pb2_grpc as qpb_grpc

__all__ = ["TYPED", "Hostile", "damage", "plant_junk"]

#: Codes a well-behaved store answers hostile calls with (never INTERNAL or UNKNOWN).
TYPED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DATA_LOSS,  # a damaged run
    grpc.StatusCode.CANCELLED,  # our own abandoned streams
    grpc.StatusCode.DEADLINE_EXCEEDED,  # our own short deadlines on idle streams
}


def damage(path: Path, rng: random.Random) -> str:
    """Spoil the closed run file at ``path``; say how."""
    data = bytearray(path.read_bytes())
    how = rng.choice(["superblock bit", "metadata bytes", "truncated", "garbage head"])
    if how == "superblock bit":
        data[rng.randrange(12, 44)] ^= 1 << rng.randrange(8)
    elif how == "metadata bytes":
        root = int.from_bytes(data[36:44], "little")
        for _ in range(4):
            data[min(root + rng.randrange(0, 64), len(data) - 1)] ^= 0xFF
    elif how == "truncated":
        del data[rng.randrange(48, max(len(data) // 2, 49)) :]
    else:
        data[:64] = rng.randbytes(64)
    path.write_bytes(bytes(data))
    return how


def plant_junk(data_dir: Path, outside: Path) -> list[str]:
    """Entries that are no runs, as names a listing shows them under."""
    (data_dir / "junk").mkdir(parents=True, exist_ok=True)
    (data_dir / "junk" / "empty.h5").write_bytes(b"")
    (data_dir / "junk" / "text.h5").write_text("not an HDF5 file")
    with h5py.File(data_dir / "junk" / "foreign.h5", "w") as f:
        f["x"] = np.arange(3)
    outside.write_bytes(b"")
    (data_dir / "junk" / "escape.h5").symlink_to(outside)
    (data_dir / "junk" / "dir.h5").mkdir(exist_ok=True)
    return ["junk/empty", "junk/escape", "junk/foreign", "junk/text"]


def _spec(shape: tuple[int, ...], dtype: str = "float32") -> RunSpec:
    return RunSpec(groups=(GroupSpec("group['x']", True, (LeafSpec("", dtype, shape),)),))


class Hostile(threading.Thread):
    """Hostile calls against ``address`` until :meth:`stop`; untyped answers are collected.

    Args:
        address: The store.
        seed: Seeds the choice of calls.
        targets: Run names to read (damaged ones among them).
    """

    def __init__(self, address: str, seed: int, targets: list[str]) -> None:
        super().__init__(name=f"hostile-{seed}", daemon=True)
        self.address = address
        self.rng = random.Random(seed)
        self.targets = targets
        self.calls = 0
        #: ``(what, code, details)`` of every answer that was not a typed error.
        self.untyped: list[tuple[str, grpc.StatusCode, str]] = []
        self._halt = threading.Event()

    def stop(self) -> None:
        """Finish the call in progress and end."""
        self._halt.set()

    def run(self) -> None:
        """Make random hostile calls until stopped."""
        actions = [
            self._bad_schema,
            self._absurd_numbers,
            self._abandoned_block,
            self._read_target,
            self._idle_reflection,
            self._huge_listing,
        ]
        with open_channel(self.address) as channel:  # a list of stores: routed at random
            ingest = pb_grpc.IngestServiceStub(channel)
            query = qpb_grpc.QueryServiceStub(channel)
            while not self._halt.is_set():
                action = self.rng.choice(actions)
                try:
                    action(channel, ingest, query)
                except grpc.RpcError as e:
                    if e.code() not in TYPED:
                        self.untyped.append((action.__name__, e.code(), str(e.details())))
                except Exception as e:  # a bug of this thread's: reported, never hidden
                    self.untyped.append((action.__name__, grpc.StatusCode.UNKNOWN, repr(e)))
                    return
                self.calls += 1

    def _run_name(self) -> str:
        return f"hostile/r{self.rng.randrange(1 << 30)}"

    def _bad_schema(self, channel, ingest, query) -> None:
        shape = self.rng.choice([(2**62, 2**62, 0), (-1,), (1 << 40, 1 << 40), (0,) * 40])
        schema = wire.schema_to_proto(_spec((3,)))
        del schema.groups[0].leaves[0].shape[:]
        schema.groups[0].leaves[0].shape.extend(shape)
        if self.rng.random() < 0.5:
            schema.config_structure_json = "[" * 5000 + "]" * 5000
        ingest.OpenRun(pb.OpenRunRequest(run=self._run_name(), schema=schema), timeout=30)

    def _absurd_numbers(self, channel, ingest, query) -> None:
        opened = ingest.OpenRun(
            pb.OpenRunRequest(run=self._run_name(), schema=wire.schema_to_proto(_spec((4,)))),
            timeout=30,
        )
        request = pb.WriteRequest(
            session=opened.session,
            block=self.rng.choice([1, 2**63, 7]),
            group=self.rng.choice([0, 5, 2**31]),
            start=self.rng.choice([-1, 0, 2**62]),
            count=self.rng.choice([0, 1, 2**31]),
            total_bytes=16,
            actual_steps=self.rng.choice([-5, 2**63 - 1, 3]),
            data=bytes(16),
        )
        try:
            for _ in ingest.Write(iter([request]), timeout=30):
                pass
        finally:
            with contextlib.suppress(grpc.RpcError):  # the stream's error may have ended it
                ingest.CloseRun(pb.CloseRunRequest(session=opened.session), timeout=30)

    def _abandoned_block(self, channel, ingest, query) -> None:
        """A block of 8 MiB, half sent, then the stream is dropped (a writer that died)."""
        opened = ingest.OpenRun(
            pb.OpenRunRequest(run=self._run_name(), schema=wire.schema_to_proto(_spec((2 << 20,)))),
            timeout=30,
        )
        half = pb.WriteRequest(
            session=opened.session,
            block=1,
            group=0,
            start=0,
            count=1,
            total_bytes=8 << 20,
            offset=0,
            data=bytes(4 << 20),
        )
        sent = threading.Event()

        def requests():
            yield half
            sent.set()
            self._halt.wait(0.5)

        call = ingest.Write(requests(), timeout=30)
        sent.wait(30)
        call.cancel()

    def _read_target(self, channel, ingest, query) -> None:
        if not self.targets:
            return
        run = self.rng.choice(self.targets)
        if self.rng.random() < 0.5:
            query.DescribeRun(qpb.DescribeRunRequest(run=run), timeout=30)
        else:
            read = qpb.ReadRequest(run=run, group="group['x']", index_is_tuple=True)
            for _ in query.Read(read, timeout=30):
                pass

    def _idle_reflection(self, channel, ingest, query) -> None:
        def idle():
            self._halt.wait(0.5)
            yield from ()

        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = stub.ServerReflectionInfo(idle(), timeout=0.3)
        try:
            for _ in call:
                pass
        except grpc.RpcError as e:
            if e.code() not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
                raise

    def _huge_listing(self, channel, ingest, query) -> None:
        size = self.rng.choice([0, 1, 10_000, 1 << 31])
        query.ListRuns(qpb.ListRunsRequest(page_size=size, page_token="\x00"), timeout=30)
