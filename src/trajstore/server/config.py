"""Server settings and limits."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from trajstore.errors import InvalidArgumentError
from trajstore.server.auth import Tokens, is_loopback

__all__ = ["Limits", "ServerConfig"]


@dataclass(frozen=True)
class Limits:
    """What one caller may ask of the server; beyond it: ``RESOURCE_EXHAUSTED``.

    Attributes:
        max_message_bytes: Largest single gRPC message accepted.
        max_frame_bytes: Largest frame of one group (all leaves).
        max_groups: Groups per run.
        max_leaves: Leaves per group.
        max_dims: Dimensions per stored dataset (a leaf's, plus its time axis).
        max_schema_json_bytes: Size of a run's structure descriptions and metadata.
        max_pending_bytes_per_run: Bytes received but not yet written, per run.
        max_open_runs: Runs open for writing at once.
    """

    max_message_bytes: int = 16 << 20
    max_frame_bytes: int = 4 << 30
    max_groups: int = 256
    max_leaves: int = 4096
    max_dims: int = 32
    max_schema_json_bytes: int = 4 << 20
    max_pending_bytes_per_run: int = 256 << 20
    max_open_runs: int = 1024

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value < 1:
                raise InvalidArgumentError(f"{name} must be at least 1, not {value}")


@dataclass(frozen=True)
class ServerConfig:
    """How to run a storage server.

    Attributes:
        data_dir: Where run files live (``<data_dir>/<run>.h5``).
        listen: Address to bind, e.g. ``127.0.0.1:50051`` (port 0: any free port).
        limits: Per-caller limits.
        flush_interval: Received data is made durable (and acknowledged) at
            least this often, in seconds.
        flush_bytes: ... and as soon as this many bytes of a run arrived since
            its last flush (so a writer's bounded window of unacknowledged
            data keeps moving).
        lease_seconds: A writer session idle this long is released.
        compress_threads: Threads compressing whole chunks of compressed
            groups, shared by every run (default: one per CPU).
        max_workers: Threads serving trajstore's calls (each open stream
            holds one), split into a share reserved for ingest calls and a
            share for reads (see :mod:`trajstore.server.gate`).
        write_workers: Of ``max_workers``, the threads only ingest calls may
            use (``None``: all but a quarter). Each writer holds one for its
            Write stream, so this bounds the writers served at once; no read
            or unauthenticated call can take them.
        max_reads_per_peer: Read calls (queries, reflection, health Watch)
            one client host may have open at once (``None``: the whole read
            share). A cap keeps one host from taking the share from the
            others; it is off by default because one analysis host with a
            thread pool of readers is a common, legitimate client.
        idle_stream_seconds: A read call waiting this long on its client
            (for a request, or for the client to take a response) is ended
            with ``RESOURCE_EXHAUSTED``; ingest calls are exempt.
        metrics_listen: ``host:port`` for the Prometheus ``/metrics`` endpoint
            (``None``: no endpoint).
        tokens: Accepted bearer tokens and their roles (none: no access control,
            allowed only on loopback unless ``insecure``).
        tls_cert: PEM certificate chain to serve TLS with.
        tls_key: PEM private key of ``tls_cert``.
        insecure: Allow listening beyond loopback without tokens.
    """

    data_dir: Path
    listen: str = "127.0.0.1:50051"
    limits: Limits = field(default_factory=Limits)
    flush_interval: float = 0.2
    flush_bytes: int = 16 << 20
    lease_seconds: float = 60.0
    compress_threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    max_workers: int = 64
    write_workers: int | None = None
    max_reads_per_peer: int | None = None
    idle_stream_seconds: float = 120.0
    metrics_listen: str | None = None
    tokens: Tokens = field(default_factory=lambda: Tokens({}))
    tls_cert: Path | None = None
    tls_key: Path | None = None
    insecure: bool = False

    def __post_init__(self) -> None:
        if not self.tokens and not self.insecure and not is_loopback(self.listen):
            raise InvalidArgumentError(
                f"refusing to listen on {self.listen} without access tokens: give tokens "
                f"(--tokens-file or TRAJSTORE_TOKENS) or, to run open, --insecure"
            )
        for name in ("flush_interval", "lease_seconds", "idle_stream_seconds"):
            if not getattr(self, name) > 0:
                raise InvalidArgumentError(f"{name} must be positive, not {getattr(self, name)}")
        for name in ("flush_bytes", "compress_threads", "max_workers"):
            if getattr(self, name) < 1:
                raise InvalidArgumentError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.max_workers < 2:
            raise InvalidArgumentError(
                f"max_workers must be at least 2 (writes and reads get a thread each), "
                f"not {self.max_workers}"
            )
        if not 1 <= self.write_share < self.max_workers:
            raise InvalidArgumentError(
                f"write_workers must be from 1 to max_workers - 1 ({self.max_workers - 1}), "
                f"not {self.write_share}"
            )
        if self.reads_per_peer < 1:
            raise InvalidArgumentError(
                f"max_reads_per_peer must be at least 1, not {self.reads_per_peer}"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidArgumentError("TLS needs both a certificate and its key")

    @property
    def write_share(self) -> int:
        """Threads reserved for ingest calls."""
        if self.write_workers is not None:
            return self.write_workers
        return self.max_workers - max(1, self.max_workers // 4)

    @property
    def read_share(self) -> int:
        """Threads for reads: those ``max_workers`` leaves after the write share."""
        return self.max_workers - self.write_share

    @property
    def reads_per_peer(self) -> int:
        """Read calls one client host may have open at once."""
        if self.max_reads_per_peer is not None:
            return self.max_reads_per_peer
        return self.read_share
