"""``trajstore push``: upload a spill journal a writer left behind."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import grpc
from tenacity import stop_after_delay

from trajstore import wire
from trajstore.blockcodec import write_method
from trajstore.client.channel import call_metadata, open_channel
from trajstore.client.journal import JournalBlock, JournalReader
from trajstore.client.sender import BlockSender
from trajstore.client.session import Session, close_session, open_retrying, open_session
from trajstore.errors import JournalError, TrajstoreError
from trajstore.schema import RunSpec
from trajstore.v1 import ingest_pb2_grpc as pb_grpc

__all__ = ["PushResult", "push_journal"]

log = logging.getLogger("trajstore.client")


@dataclass(frozen=True)
class PushResult:
    """What :func:`push_journal` did."""

    run: str
    address: str
    blocks_sent: int
    blocks_skipped: int  # the store held them already
    frames_sent: int
    actual_steps: int
    damaged_bytes: int  # a torn tail (the writer died mid-record), not uploaded


def push_journal(
    path: str | os.PathLike[str],
    address: str | None = None,
    *,
    token: str | None = None,
    tls_ca: str | os.PathLike[str] | None = None,
    timeout: float = 60.0,
    wait: float = 120.0,
    keep: bool = False,
) -> PushResult:
    """Upload the blocks of a spill journal to its run, in order; then delete it.

    The run is opened in ``append`` mode with the schema the journal
    recorded. Blocks whose frames the store already holds are skipped (a
    writer may have uploaded part of the journal before it stopped); the
    rest are streamed like a writer's, with reconnects. A journal that would
    leave a gap (the store holds fewer frames than its first block needs) is
    refused before anything is sent. A journal with a damaged or torn end
    (its writer died mid-record) has every intact record uploaded and is
    kept, for a look at what follows.

    Args:
        path: The journal file.
        address: The store (default: the address the writer used).
        token: Bearer token (default: ``TRAJSTORE_TOKEN``).
        tls_ca: CA certificate (PEM) for TLS (default: ``TRAJSTORE_TLS_CA``).
        timeout: Seconds to wait for each OpenRun/CloseRun call.
        wait: Seconds to keep retrying while the store is unreachable or the
            run is still held (the writer's lease has not yet run out).
        keep: Keep the journal after a successful upload.

    Raises:
        JournalError: The file is not a journal, or its blocks do not fit the run.
    """
    path = Path(path)
    with JournalReader(path) as reader:
        target = address or reader.address
        spec = wire.schema_from_proto(reader.open_request.schema)
        metadata = call_metadata(token, reader.run)
        channel = open_channel(target, tls_ca)
        try:
            stub = pb_grpc.IngestServiceStub(channel)  # type: ignore[no-untyped-call]
            session = _open_waiting(stub, reader, metadata, timeout, wait)
            try:
                plan = _plan(reader, spec, session)
            except BaseException:
                _release(stub, session.id, metadata, timeout)
                raise
            write = write_method(channel)
            result = _send(stub, write, reader, spec, session, plan, metadata, timeout, target)
        finally:
            channel.close()
    if result.damaged_bytes:  # kept: what follows the damage may still be worth a look
        log.warning(
            "journal %s: %d damaged bytes at its end were not uploaded; the journal is kept",
            path,
            result.damaged_bytes,
        )
    elif not keep:
        path.unlink()
    return result


def _open_waiting(
    stub: pb_grpc.IngestServiceStub,
    reader: JournalReader,
    metadata: tuple[tuple[str, str], ...],
    timeout: float,
    wait: float,
) -> Session:
    """OpenRun in append mode, retrying while the store is away or the run still held."""
    return open_retrying(
        lambda: open_session(stub, reader.open_request, metadata=metadata, timeout=timeout),
        stop=stop_after_delay(wait),
        first_wait=0.2,
    )


def _release(
    stub: pb_grpc.IngestServiceStub,
    session: str,
    metadata: tuple[tuple[str, str], ...],
    timeout: float,
) -> None:
    """Close a failed upload's session at once (not after a lease), step count untouched."""
    with contextlib.suppress(TrajstoreError):
        close_session(stub, session, None, metadata=metadata, timeout=timeout)


@dataclass
class _Plan:
    offsets: list[int]  # blocks to send
    blocks: int  # blocks in the journal
    actual_steps: int


def _plan(reader: JournalReader, spec: RunSpec, session: Session) -> _Plan:
    """Which blocks to send; checks every block against the run before anything is sent."""
    held = list(session.frames)
    if len(held) != len(spec.groups):
        raise JournalError(
            f"the store reported {len(held)} groups for {reader.run!r}, "
            f"the journal's schema has {len(spec.groups)}"
        )
    plan = _Plan([], 0, 0)
    for offset, record in reader.records():
        plan.actual_steps = max(plan.actual_steps, record.actual_steps)
        if not isinstance(record, JournalBlock):
            continue
        plan.blocks += 1
        if record.group >= len(spec.groups):
            raise JournalError(
                f"journal block {record.number}: the run has no group {record.group}"
            )
        name = spec.groups[record.group].name
        if record.start + record.count <= held[record.group]:
            continue  # the store holds these frames already
        if record.start > held[record.group]:
            raise JournalError(
                f"{name}: the store holds {held[record.group]} frames but the journal goes on "
                f"from frame {record.start}; the frames in between are missing, so nothing "
                f"was uploaded"
            )
        held[record.group] = record.start + record.count
        plan.offsets.append(offset)
    return plan


def _send(
    stub: pb_grpc.IngestServiceStub,
    write: grpc.StreamStreamMultiCallable,
    reader: JournalReader,
    spec: RunSpec,
    session: Session,
    plan: _Plan,
    metadata: tuple[tuple[str, str], ...],
    timeout: float,
    address: str,
) -> PushResult:
    def reopen(previous: str) -> Session:
        request = type(reader.open_request)()
        request.CopyFrom(reader.open_request)
        request.takeover_session = previous
        return open_session(stub, request, metadata=metadata, timeout=timeout)

    sender = BlockSender(write, session, spec, reopen=reopen, metadata=metadata)
    sender.actual_steps = plan.actual_steps
    frames = 0
    try:
        for offset in plan.offsets:
            found = reader.read_at(offset)
            if found is None or not isinstance(found[0], JournalBlock):
                raise JournalError(f"journal {reader.path} changed while being uploaded")
            block = found[0]
            sender.put_block(
                block.group, block.start, block.count, block.payload, block.actual_steps
            )
            frames += block.count
        sender.close(close_run=True)
    except BaseException:
        sender.cancel()
        _release(stub, sender.session, metadata, timeout)
        raise
    if sender.closed_run is None:  # the stream did not close it (a store before close=True)
        close_session(stub, sender.session, plan.actual_steps, metadata=metadata, timeout=timeout)
    return PushResult(
        run=reader.run,
        address=address,
        blocks_sent=len(plan.offsets),
        blocks_skipped=plan.blocks - len(plan.offsets),
        frames_sent=frames,
        actual_steps=plan.actual_steps,
        damaged_bytes=reader.damaged_bytes,
    )
