"""Building, starting and stopping a storage server."""

from __future__ import annotations

import logging
import os
import threading
from concurrent import futures
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from trajstore.server.auth import Tokens
from trajstore.server.config import Limits, ServerConfig
from trajstore.server.files import RunFiles
from trajstore.server.gate import Budget, Gate
from trajstore.server.ingest import IngestServicer
from trajstore.server.metrics import Metrics, start_metrics_endpoint
from trajstore.server.query import QueryServicer
from trajstore.server.services import add_services
from trajstore.server.sessions import RunRegistry

__all__ = ["ServerHandle", "create_server", "serve"]

log = logging.getLogger("trajstore.server")

#: Room for a WriteRequest's other fields next to its data.
MESSAGE_OVERHEAD = 64 << 10


SERVICE_NAMES = (
    "trajstore.v1.IngestService",
    "trajstore.v1.QueryService",
)


#: Clients ping every 30 s while a call is open, also when no data moves (a
#: follow waiting for frames); gRPC's default would count pings closer than
#: 5 minutes apart as abuse and close the connection.
KEEPALIVE_OPTIONS = [
    # GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
]


def create_server(config: ServerConfig) -> tuple[grpc.Server, int, RunRegistry]:
    """A gRPC server bound to ``config.listen`` (not started), its port and its run registry.

    Besides trajstore's services it serves the standard gRPC health service
    (``grpc.health.v1``) and server reflection.
    """
    server, port, registry, _gate = _build(config)
    return server, port, registry


def _build(config: ServerConfig) -> tuple[grpc.Server, int, RunRegistry, Gate]:
    """:func:`create_server`, and the gate admitting its calls (to close with it)."""
    os.makedirs(config.data_dir, exist_ok=True)
    metrics = Metrics()
    registry = RunRegistry(config, RunFiles(config.data_dir), metrics)
    metrics.watch(lambda: registry.open_runs, registry.queued_bytes)
    max_message = config.limits.max_message_bytes + MESSAGE_OVERHEAD
    gate = Gate(
        config.tokens,
        Budget(
            write_workers=config.write_share,
            read_workers=config.read_share,
            reads_per_peer=config.reads_per_peer,
            idle_seconds=config.idle_stream_seconds,
        ),
    )
    # Every call runs on a thread pool of the gate's (its share's, or the refusals'):
    # this one serves nothing, and gRPC's own concurrency limit is off (the gate
    # refuses beyond each share, with a typed error naming the limit).
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="rpc-unused"),
        options=[
            ("grpc.max_receive_message_length", max_message),
            ("grpc.max_send_message_length", max_message),
            # gRPC shares a port with any other process by default (SO_REUSEPORT):
            # a second store started on a port in use would silently get half of
            # its connections. Each store process has its own port (``--processes``).
            ("grpc.so_reuseport", 0),
            *KEEPALIVE_OPTIONS,
        ],
        interceptors=[gate],
    )
    add_services(
        server,
        IngestServicer(registry),
        QueryServicer(
            registry,
            part_bytes=config.limits.max_message_bytes,
            fetch_streams=max(1, config.read_share // 2),
        ),
    )
    registry.health = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(registry.health, server)
    reflection.enable_server_reflection(
        (
            *SERVICE_NAMES,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    credentials = None
    if config.tls_cert is not None and config.tls_key is not None:
        credentials = grpc.ssl_server_credentials(
            [(config.tls_key.read_bytes(), config.tls_cert.read_bytes())]
        )
    try:
        if credentials is not None:
            port = server.add_secure_port(config.listen, credentials)
        else:
            port = server.add_insecure_port(config.listen)
    except RuntimeError:  # grpc's "Failed to bind"
        port = 0
    if port == 0:
        gate.close()
        raise OSError(
            f"cannot listen on {config.listen}: the port is in use (another store?) "
            f"or the address is not this host's"
        )
    return server, port, registry, gate


class ServerHandle:
    """A running storage server: knows its port, stops gracefully."""

    def __init__(
        self,
        server: grpc.Server,
        port: int,
        registry: RunRegistry,
        config: ServerConfig,
        gate: Gate | None = None,
    ):
        self.server = server
        self.gate = gate
        self.port = port
        self.registry = registry
        self.config = config
        self._stopping = threading.Event()  # stop() was called
        self._stopped = threading.Event()  # ... and every run is flushed and closed
        self._metrics_server: Any = None
        #: Port of the ``/metrics`` endpoint, if one was asked for.
        self.metrics_port: int | None = None
        if config.metrics_listen and registry.metrics is not None:
            self._metrics_server, self.metrics_port = start_metrics_endpoint(
                registry.metrics, config.metrics_listen
            )

    @property
    def address(self) -> str:
        """``host:port`` to connect to."""
        host = self.config.listen.rsplit(":", 1)[0]
        if host in ("", "0.0.0.0", "[::]"):  # noqa: S104 (only rewriting for the client)
            host = "127.0.0.1"
        return f"{host}:{self.port}"

    def stop(self, grace: float = 10.0) -> None:
        """Stop accepting calls, let running ones finish, flush and close every run.

        A second call returns at once (it may come from a signal handler
        interrupting the first); :meth:`wait` waits for the first to finish.
        """
        if self._stopping.is_set():
            return
        self._stopping.set()
        try:
            if self.registry.health is not None:
                self.registry.health.enter_graceful_shutdown()
            # gRPC cancels what is still running after ``grace``; its shutdown event
            # can stay unset after a call whose messages failed to decode, so the
            # wait is bounded too.
            if not self.server.stop(grace).wait(grace + 5):
                log.warning("gRPC shutdown did not confirm; closing the runs anyway")
            self.registry.close_all()
            self.registry.files.close_all()
            if self._metrics_server is not None:
                self._metrics_server.shutdown()
            if self.gate is not None:
                self.gate.close()
        finally:
            self._stopped.set()
        log.info("server on port %d stopped", self.port)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server has stopped and every run is closed; ``False`` on timeout."""
        return self._stopped.wait(timeout)

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def serve(
    data_dir: str | os.PathLike[str],
    listen: str = "127.0.0.1:0",
    *,
    limits: Limits | None = None,
    flush_interval: float = 0.2,
    flush_bytes: int = 16 << 20,
    compress_threads: int | None = None,
    lease_seconds: float = 60.0,
    max_workers: int = 64,
    write_workers: int | None = None,
    max_reads_per_peer: int | None = None,
    idle_stream_seconds: float = 120.0,
    metrics_listen: str | None = None,
    tokens: Tokens | None = None,
    tls_cert: str | os.PathLike[str] | None = None,
    tls_key: str | os.PathLike[str] | None = None,
    insecure: bool = False,
) -> ServerHandle:
    """Start a storage server in this process; returns once it accepts calls.

    Args:
        data_dir: Where run files live.
        listen: ``host:port`` to bind; port 0 picks a free port (see ``handle.port``).
        limits: Per-caller limits (default: :class:`Limits`).
        flush_interval: Seconds between background flushes (and acknowledgements).
        flush_bytes: Flush a run also once this many bytes arrived since its last flush.
        compress_threads: Threads compressing chunks (default: one per CPU).
        lease_seconds: A writer session idle this long is released.
        max_workers: Threads serving calls, writes and reads together.
        write_workers: Of those, the threads reserved for ingest calls
            (default: all but a quarter).
        max_reads_per_peer: Read calls one client host may have open
            (default: the whole read share).
        idle_stream_seconds: A read call waiting this long on its client is ended.
        metrics_listen: ``host:port`` for a Prometheus ``/metrics`` endpoint.
        tokens: Accepted bearer tokens (see :class:`~trajstore.server.auth.Tokens`).
        tls_cert: PEM certificate chain: serve TLS.
        tls_key: PEM private key of ``tls_cert``.
        insecure: Allow listening beyond loopback without tokens.

    Raises:
        InvalidArgumentError: Listening beyond loopback without tokens and
            without ``insecure`` (secure by default).
    """
    config = ServerConfig(
        data_dir=Path(data_dir),
        listen=listen,
        limits=limits or Limits(),
        flush_interval=flush_interval,
        flush_bytes=flush_bytes,
        compress_threads=compress_threads or os.cpu_count() or 1,
        lease_seconds=lease_seconds,
        max_workers=max_workers,
        write_workers=write_workers,
        max_reads_per_peer=max_reads_per_peer,
        idle_stream_seconds=idle_stream_seconds,
        metrics_listen=metrics_listen,
        tokens=tokens or Tokens({}),
        tls_cert=Path(tls_cert) if tls_cert else None,
        tls_key=Path(tls_key) if tls_key else None,
        insecure=insecure,
    )
    server, port, registry, gate = _build(config)
    server.start()
    handle = ServerHandle(server, port, registry, config, gate)
    log.info(
        "trajstore server listening",
        extra={"port": port, "data_dir": str(config.data_dir), "metrics_port": handle.metrics_port},
    )
    return handle
