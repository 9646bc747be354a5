"""The ingest service: OpenRun, the Write stream, CloseRun."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

import grpc

from trajstore import bounds, errors, wire
from trajstore.blockcodec import IncomingPart
from trajstore.server.sessions import Ack, BlockHeader, RunRegistry, WriterSession
from trajstore.server.status import abort_with, typed_errors
from trajstore.v1 import ingest_pb2 as pb
from trajstore.v1 import ingest_pb2_grpc as pb_grpc

IncomingWrite = IncomingPart[pb.WriteRequest]

__all__ = ["IngestServicer"]

log = logging.getLogger("trajstore.server")


def _ack_message(ack: Ack) -> pb.WriteResponse:
    return pb.WriteResponse(durable_block=ack.block, durable_frames=list(ack.frames))


class IngestServicer(pb_grpc.IngestServiceServicer):
    """Accepts runs streamed by simulation nodes."""

    def __init__(self, registry: RunRegistry) -> None:
        self.registry = registry

    @typed_errors
    def OpenRun(  # noqa: N802 (gRPC method name)
        self, request: pb.OpenRunRequest, context: grpc.ServicerContext
    ) -> pb.OpenRunResponse:
        """Open a run for one writer."""
        spec = wire.schema_from_proto(request.schema)
        mode = wire.mode_from_proto(request.mode)
        session = self.registry.open(
            request.run,
            mode,  # type: ignore[arg-type]
            spec,
            takeover=request.takeover_session,
        )
        log.info("run opened", extra={"run": request.run, "mode": mode, "peer": context.peer()})
        config = self.registry.config
        return pb.OpenRunResponse(
            session=session.id,
            frames=list(session.ack.frames),
            actual_steps=session.writer.file.actual_steps,
            max_message_bytes=config.limits.max_message_bytes,
            lease_seconds=config.lease_seconds,
        )

    @typed_errors
    def CloseRun(  # noqa: N802 (gRPC method name)
        self, request: pb.CloseRunRequest, context: grpc.ServicerContext
    ) -> pb.CloseRunResponse:
        """Flush and close the run; release it for other writers."""
        actual_steps = None
        if request.HasField("actual_steps"):
            actual_steps = bounds.check_count(
                request.actual_steps, "actual_steps", errors.StepOrderError
            )
        ack, recorded = self._close(request.session, actual_steps, context)
        return pb.CloseRunResponse(frames=list(ack.frames), actual_steps=recorded)

    def _close(
        self, session_id: str, actual_steps: int | None, context: grpc.ServicerContext
    ) -> tuple[Ack, int]:
        """Close a session's run (CloseRun, or a Write stream's close); its frames and steps."""
        session = self.registry.get(session_id)
        ack = self.registry.close(session_id, actual_steps)
        recorded = session.writer.file.actual_steps
        log.info(
            "run closed",
            extra={
                "run": session.run,
                "frames": list(ack.frames),
                "peer": context.peer(),
                "actual_steps": recorded,
            },
        )
        return ack, recorded

    def Write(  # noqa: N802 (gRPC method name)
        self,
        request_iterator: Iterator[IncomingWrite],
        context: grpc.ServicerContext,
    ) -> Iterator[pb.WriteResponse]:
        """Receive blocks; answer with acknowledgements as data becomes durable."""
        with contextlib.ExitStack() as held:
            try:
                first = next(request_iterator, None)
                if first is None:
                    return
                session = self.registry.get(first.fields.session)
                held.enter_context(session.stream())  # RunLockedError: one stream per session
            except Exception as e:
                abort_with(context, e)
                return
            yield from self._acknowledge(session, first, request_iterator, context)

    def _acknowledge(
        self,
        session: WriterSession,
        first: IncomingWrite,
        requests: Iterator[IncomingWrite],
        context: grpc.ServicerContext,
    ) -> Iterator[pb.WriteResponse]:
        failure: list[BaseException] = []
        closed: list[tuple[Ack, int]] = []  # the run's final frames and steps, once closed
        closing = threading.Event()  # the writer asked to close the run
        done = threading.Event()

        def consume() -> None:
            try:
                request: IncomingWrite | None = first
                while request is not None:
                    _receive(session, request)
                    if request.fields.close:
                        closing.set()
                        steps = request.fields.actual_steps
                        closed.append(self._close(session.id, steps or None, context))
                        return
                    request = next(requests, None)
                session.writer.flush()  # the client is done: make everything durable
            except Exception as e:
                failure.append(e)
            finally:
                done.set()
                session.wake()

        consumer = threading.Thread(target=consume, name="trajstore-ingest", daemon=True)
        consumer.start()
        sent = session.ack
        while True:
            ack = session.wait_for_ack(sent, timeout=1.0, stop=done.is_set)
            if ack != sent:
                # Also when there is nothing to send (a rewind lowered the visible
                # frames before any block was durable): else this loop spins.
                sent, new_block = ack, ack.block != sent.block
                if new_block:
                    yield _ack_message(ack)
            if done.is_set() and session.ack == sent:
                break
            if session.writer.failed:
                try:
                    session.writer.raise_if_failed()
                except Exception as e:  # writing this run failed: end the stream with it
                    failure.insert(0, e)
                break
            if session.closed or not context.is_active():
                break
        if closing.is_set():
            done.wait()  # the close ends the consumer: its outcome decides the stream's end
        if failure:
            abort_with(context, failure[0])
        elif closed:
            ack, steps = closed[0]
            final = _ack_message(ack)
            final.closed, final.actual_steps = True, steps
            yield final


def _receive(session: WriterSession, incoming: IncomingWrite) -> None:
    request, data = incoming.fields, incoming.data
    session.touch()
    if session.closed:
        raise errors.FailedPreconditionError("this writer session was closed")
    if request.session and request.session != session.id:
        raise errors.InvalidArgumentError("a write stream carries one session")
    # Every number is checked before anything is done with the message.
    bounds.check_count(request.actual_steps, "actual_steps", errors.StepOrderError)
    if not request.block and (
        request.count
        or request.total_bytes
        or len(data)
        or request.group
        or request.start
        or request.offset
    ):
        raise errors.InvalidArgumentError(
            "frames sent without a block number (blocks count from 1)"
        )
    if request.block:
        header = BlockHeader(
            block=request.block,
            group=request.group,
            start=request.start,
            count=request.count,
            total_bytes=request.total_bytes,
        )
        session.receive(header, request.offset, data, request.actual_steps)
    elif request.actual_steps:
        session.writer.set_actual_steps(request.actual_steps)
    if request.flush:
        session.writer.flush(timeout=0)  # asynchronous: acknowledged when done
