"""The ``trajstore`` command."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

import click

__all__ = ["main"]


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "TRAJSTORE"}
)
@click.version_option(package_name="trajstore")
def main() -> None:
    """Store and read the trajectories of JAX simulations.

    Every option can also be set by the environment variable shown in its
    help, TRAJSTORE_<OPTION> (e.g. TRAJSTORE_DATA_DIR).
    """


@main.command()
@click.option(
    "--data-dir",
    envvar="TRAJSTORE_DATA_DIR",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    show_envvar=True,
    help="Where run files live (<data-dir>/<run>.h5).",
)
@click.option(
    "--listen",
    envvar="TRAJSTORE_LISTEN",
    default="127.0.0.1:50051",
    show_default=True,
    show_envvar=True,
    help="host:port to listen on; port 0 picks a free port.",
)
@click.option(
    "--flush-interval",
    envvar="TRAJSTORE_FLUSH_INTERVAL",
    type=float,
    default=0.2,
    show_default=True,
    show_envvar=True,
    help="Seconds between background flushes (and acknowledgements).",
)
@click.option(
    "--lease-seconds",
    envvar="TRAJSTORE_LEASE_SECONDS",
    type=float,
    default=60.0,
    show_default=True,
    show_envvar=True,
    help="An idle writer session is released after this long.",
)
@click.option(
    "--max-message-bytes",
    envvar="TRAJSTORE_MAX_MESSAGE_BYTES",
    type=int,
    default=8 << 20,
    show_default=True,
    show_envvar=True,
    help="Largest gRPC message accepted.",
)
@click.option(
    "--max-frame-bytes",
    envvar="TRAJSTORE_MAX_FRAME_BYTES",
    type=int,
    default=4 << 30,
    show_default=True,
    show_envvar=True,
    help="Largest frame of one group.",
)
@click.option(
    "--max-pending-bytes",
    envvar="TRAJSTORE_MAX_PENDING_BYTES",
    type=int,
    default=256 << 20,
    show_default=True,
    show_envvar=True,
    help="Bytes received but not yet written, per run.",
)
@click.option(
    "--max-open-runs",
    envvar="TRAJSTORE_MAX_OPEN_RUNS",
    type=int,
    default=1024,
    show_default=True,
    show_envvar=True,
    help="Runs open for writing at once.",
)
@click.option(
    "--max-workers",
    envvar="TRAJSTORE_MAX_WORKERS",
    type=int,
    default=64,
    show_default=True,
    show_envvar=True,
    help="Threads serving calls (each open write stream holds one).",
)
@click.option(
    "--log-level",
    envvar="TRAJSTORE_LOG_LEVEL",
    default="INFO",
    show_default=True,
    show_envvar=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
def serve(
    data_dir: Path,
    listen: str,
    flush_interval: float,
    lease_seconds: float,
    max_message_bytes: int,
    max_frame_bytes: int,
    max_pending_bytes: int,
    max_open_runs: int,
    max_workers: int,
    log_level: str,
) -> None:
    """Run a storage server until SIGTERM or SIGINT, then drain, flush and exit."""
    from trajstore.server import Limits
    from trajstore.server import serve as start_server

    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    limits = Limits(
        max_message_bytes=max_message_bytes,
        max_frame_bytes=max_frame_bytes,
        max_pending_bytes_per_run=max_pending_bytes,
        max_open_runs=max_open_runs,
    )
    handle = start_server(
        data_dir,
        listen,
        limits=limits,
        flush_interval=flush_interval,
        lease_seconds=lease_seconds,
        max_workers=max_workers,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    click.echo(
        f"trajstore serving on {handle.address} (data in {data_dir})",
    )
    sys.stdout.flush()
    stop.wait()
    click.echo("trajstore: stopping: draining streams, flushing runs", err=True)
    handle.stop()


if __name__ == "__main__":
    main()
