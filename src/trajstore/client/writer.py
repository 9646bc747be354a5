"""``RemoteStorageWriter``: the local writer's API, streaming to a store."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar

import grpc

from trajstore import wire
from trajstore.blockcodec import write_method
from trajstore.checks import check_positive
from trajstore.client.channel import call_metadata, open_channel
from trajstore.client.journal import JournalWriter
from trajstore.client.sender import BlockSender
from trajstore.client.session import Session, close_session, open_session
from trajstore.errors import JournalError, JournalLeftWarning, NotOpenError
from trajstore.extraction import EXTRACTIONS, Extraction, FrameExtractor
from trajstore.groups import prepare_groups
from trajstore.local import StepClock
from trajstore.v1 import ingest_pb2 as pb
from trajstore.v1 import ingest_pb2_grpc as pb_grpc

__all__ = ["RemoteStorageWriter"]

log = logging.getLogger("trajstore.client")

State = TypeVar("State")
Config = TypeVar("Config")


class RemoteStorageWriter(Generic[State, Config]):
    """Logs simulation states to a run on a trajstore server; a :class:`~trajstore.Logger`.

    Behaves like :class:`~trajstore.HDF5StorageWriter`: ``log()`` runs the
    views, checks the frames and takes host copies, then returns; a
    background thread batches frames into blocks and streams them. At most
    ``max_pending_bytes`` may be logged but not yet acknowledged as durable
    by the server; beyond that ``log()`` blocks (nothing is dropped).
    ``flush()`` returns once the server has made everything logged so far
    durable. ``__exit__`` flushes and closes the run, recording
    ``actual_steps``. An error on the server or the connection is raised by
    the next ``log()``, ``flush()`` or ``__exit__`` as the same
    :class:`~trajstore.TrajstoreError` subclass the server raised.

    Args:
        address: ``host:port`` of the store; several stores sharing one data
            directory: ``host1:port,host2:port`` or a ``dns:///`` name (calls
            about a run go to one of them, chosen by the run name).
        run: Run name, e.g. ``"project/run-7"``.
        config: Pytree whose leaves are :class:`~trajstore.WriterGroupConfig`.
        initial_state: A state like the ones to be logged.
        total_steps: Expected run length (a hint).
        mode: ``"create"`` (default; an existing run is an error),
            ``"overwrite"`` or ``"append"`` (resume; the schema must match).
        metadata: JSON-serialisable user metadata stored with the run.
        compile_views: Compile the views with ``jax.jit``.
        token: Bearer token sent with every call (default: ``TRAJSTORE_TOKEN``).
        tls_ca: CA certificate (PEM) to connect with TLS (default: ``TRAJSTORE_TLS_CA``).
        max_pending_bytes: Bound on bytes logged but not yet durable.
        send_interval: A partly filled block is sent after this many seconds.
        timeout: Seconds to wait for the store when opening and closing the run.
        reconnect_timeout: When the stream breaks, the writer reconnects with
            backoff and resends everything not yet acknowledged; after this many
            seconds without the store it gives up, and the next ``log()``,
            ``flush()`` or ``__exit__`` raises :class:`~trajstore.errors.UnavailableError`
            -- unless a ``journal`` is given.
        journal: Path of a spill journal (created only when needed; it must
            not exist). When the store stays unreachable past
            ``reconnect_timeout``, frames go to this file instead, ``log()``
            keeps working, ``flush()`` returns once they are durable in it, and
            the writer keeps reconnecting; once the store is back it uploads the
            journal in order and deletes it. If the writer closes first, the
            journal stays (a :class:`~trajstore.errors.JournalLeftWarning` says
            where) and ``trajstore push JOURNAL`` uploads it later.
        extraction: How compiled views run at each step; as for
            :class:`~trajstore.HDF5StorageWriter`.
    """

    def __init__(
        self,
        address: str,
        run: str,
        config: Config,
        initial_state: State,
        total_steps: int | None = None,
        *,
        mode: Literal["create", "overwrite", "append"] = "create",
        metadata: Mapping[str, Any] | None = None,
        compile_views: bool = True,
        token: str | None = None,
        tls_ca: str | os.PathLike[str] | None = None,
        max_pending_bytes: int = 64 << 20,
        send_interval: float = 0.1,
        timeout: float = 60.0,
        reconnect_timeout: float = 300.0,
        journal: str | os.PathLike[str] | None = None,
        extraction: Extraction = "auto",
    ) -> None:
        if extraction not in EXTRACTIONS:
            raise ValueError(f"extraction must be one of {EXTRACTIONS}, got {extraction!r}")
        if mode not in wire.MODES:
            raise ValueError(f"mode must be 'create', 'overwrite' or 'append', got {mode!r}")
        check_positive("max_pending_bytes", max_pending_bytes, integer=True)
        check_positive("send_interval", send_interval)
        check_positive("timeout", timeout)
        check_positive("reconnect_timeout", reconnect_timeout)
        self.address = address
        self.run = run
        self.config = config
        self.initial_state: State | None = initial_state
        self.total_steps = total_steps
        self.mode = mode
        self.metadata = metadata
        self.compile_views = compile_views
        self.extraction: Extraction = extraction
        self.max_pending_bytes = max_pending_bytes
        self.send_interval = send_interval
        self.timeout = timeout
        self.reconnect_timeout = reconnect_timeout
        self.journal = Path(journal) if journal is not None else None
        #: The journal left on disk by ``__exit__`` (the store was away), else ``None``.
        self.journal_left: Path | None = None
        self._metadata = call_metadata(token, run)
        self._tls_ca = tls_ca
        self._extractor: FrameExtractor | None = None
        self._channel: grpc.Channel | None = None
        self._stub: pb_grpc.IngestServiceStub | None = None
        self._sender: BlockSender | None = None
        self._clock = StepClock()
        #: Frames durable per group (by name) when the run was opened: ``append``
        #: resumes each from there.
        self.resumed_frames: dict[str, int] = {}
        self._group_names: list[str] = []

    def __enter__(self) -> RemoteStorageWriter[State, Config]:
        if self._sender is not None:
            raise NotOpenError("this writer is already open")
        if self.initial_state is None:  # let go of at the first __enter__
            raise NotOpenError("a writer opens once; create a new one to log again")
        if self.journal is not None and self.journal.exists():
            raise JournalError(
                f"journal {self.journal} already exists: upload it first with "
                f"`trajstore push {self.journal}`, or choose another path"
            )
        groups, spec = prepare_groups(
            self.config,
            self.initial_state,
            self.total_steps,
            compile_views=self.compile_views,
            metadata=self.metadata,
        )
        extractor = FrameExtractor(
            groups, self.initial_state, compiled=self.compile_views, mode=self.extraction
        )
        self._channel = open_channel(self.address, self._tls_ca)
        self._stub = pb_grpc.IngestServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._schema = wire.schema_to_proto(spec)
        self._group_names = spec.group_names
        try:
            session = self._open_run(self.mode)
        except BaseException:
            self._channel.close()
            self._channel = None
            raise
        self._sender = BlockSender(
            write_method(self._channel),
            session,
            spec,
            reopen=lambda previous: self._open_run("append", takeover=previous),
            metadata=self._metadata,
            max_pending_bytes=self.max_pending_bytes,
            send_interval=self.send_interval,
            reconnect_timeout=self.reconnect_timeout,
            open_journal=None if self.journal is None else self._journal_opener(self.journal),
        )
        self._extractor = extractor
        self._clock = StepClock()
        self.initial_state = None
        return self

    def _journal_opener(self, path: Path) -> Callable[[], JournalWriter]:
        """What creates the spill journal at ``path`` when the store stays away."""
        request = pb.OpenRunRequest(run=self.run, mode=wire.MODES["append"], schema=self._schema)
        return lambda: JournalWriter(path, self.address, request)

    def _open_run(self, mode: str, takeover: str = "") -> Session:
        """OpenRun on the store; records where each group stands."""
        if self._stub is None:
            raise NotOpenError("the writer is not open")
        session = open_session(
            self._stub,
            pb.OpenRunRequest(
                run=self.run, mode=wire.MODES[mode], schema=self._schema, takeover_session=takeover
            ),
            metadata=self._metadata,
            timeout=self.timeout,
        )
        if not takeover:
            self.resumed_frames = dict(zip(self._group_names, session.frames, strict=True))
        return session

    @property
    def reconnects(self) -> int:
        """How often the stream broke and the writer reconnected and resent."""
        return self._sender.reconnects if self._sender is not None else 0

    def log(self, state: State, step: int) -> None:
        """Queue what the config selects from ``state`` at ``step``."""
        sender = self._require_open()
        sender.raise_if_failed()
        step = self._clock.check(step)
        frames = self._require_extractor().frames(state, step)  # raises before anything is taken
        self._clock.commit(step)
        if frames:
            sender.put_frames(frames)
        sender.actual_steps = step + 1

    def flush(self) -> None:
        """Return once the store has made everything logged so far durable."""
        self._require_open().flush()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        sender, self._sender = self._sender, None
        if sender is None:
            return
        try:
            try:
                sender.close(close_run=True)
            finally:
                self.journal_left = sender.journal_left
                if self.journal_left is None and sender.closed_run is None:
                    self._close_run(sender.session, sender.actual_steps)
            if self.journal_left is not None:
                message = (
                    f"the store was unreachable when run {self.run!r} closed: frames it has "
                    f"not stored are in {self.journal_left}; upload them with "
                    f"`trajstore push {self.journal_left}`"
                )
                log.warning(message)
                warnings.warn(message, JournalLeftWarning, stacklevel=2)
        except Exception as close_error:
            if exc is None:
                raise
            exc.add_note(f"trajstore: closing run {self.run!r} also failed: {close_error!r}")
        finally:
            if self._channel is not None:
                self._channel.close()
                self._channel = None

    def _close_run(self, session: str, actual_steps: int) -> None:
        if self._stub is not None:
            close_session(
                self._stub, session, actual_steps, metadata=self._metadata, timeout=self.timeout
            )

    def _require_open(self) -> BlockSender:
        if self._sender is None:
            raise NotOpenError("log() and flush() work only inside the writer's `with` block")
        return self._sender

    def _require_extractor(self) -> FrameExtractor:
        if self._extractor is None:
            raise NotOpenError("log() works only inside the writer's `with` block")
        return self._extractor
