"""The ``trajstore`` command."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import click
import numpy as np

from trajstore.store.layout import step_interval

if TYPE_CHECKING:
    from trajstore.client.reader import Client

__all__ = ["main"]


class _Group(click.Group):
    """Prints trajstore errors as one clear line and exits 1."""

    def invoke(self, ctx: click.Context) -> object:
        from trajstore.errors import TrajstoreError

        try:
            return super().invoke(ctx)
        except TrajstoreError as e:
            raise click.ClickException(f"{type(e).__name__}: {e}") from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
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
    type=click.FloatRange(min=0, min_open=True),
    default=0.2,
    show_default=True,
    show_envvar=True,
    help="Seconds between background flushes (and acknowledgements).",
)
@click.option(
    "--flush-bytes",
    envvar="TRAJSTORE_FLUSH_BYTES",
    type=click.IntRange(min=1),
    default=16 << 20,
    show_default=True,
    show_envvar=True,
    help="Flush a run also once this many bytes arrived since its last flush.",
)
@click.option(
    "--compress-threads",
    envvar="TRAJSTORE_COMPRESS_THREADS",
    type=click.IntRange(min=1),
    default=None,
    show_envvar=True,
    help="Threads compressing chunks of compressed groups [default: one per CPU].",
)
@click.option(
    "--lease-seconds",
    envvar="TRAJSTORE_LEASE_SECONDS",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    show_envvar=True,
    help="An idle writer session is released after this long.",
)
@click.option(
    "--max-message-bytes",
    envvar="TRAJSTORE_MAX_MESSAGE_BYTES",
    type=click.IntRange(min=1),
    default=16 << 20,
    show_default=True,
    show_envvar=True,
    help="Largest gRPC message accepted.",
)
@click.option(
    "--max-frame-bytes",
    envvar="TRAJSTORE_MAX_FRAME_BYTES",
    type=click.IntRange(min=1),
    default=4 << 30,
    show_default=True,
    show_envvar=True,
    help="Largest frame of one group.",
)
@click.option(
    "--max-pending-bytes",
    envvar="TRAJSTORE_MAX_PENDING_BYTES",
    type=click.IntRange(min=1),
    default=256 << 20,
    show_default=True,
    show_envvar=True,
    help="Bytes received but not yet written, per run.",
)
@click.option(
    "--max-open-runs",
    envvar="TRAJSTORE_MAX_OPEN_RUNS",
    type=click.IntRange(min=1),
    default=1024,
    show_default=True,
    show_envvar=True,
    help="Runs open for writing at once.",
)
@click.option(
    "--max-workers",
    envvar="TRAJSTORE_MAX_WORKERS",
    type=click.IntRange(min=2),
    default=64,
    show_default=True,
    show_envvar=True,
    help=(
        "Threads serving calls, writes and reads together (each open stream holds one): "
        "--write-workers of them only ingest calls may use, the rest serve reads."
    ),
)
@click.option(
    "--write-workers",
    envvar="TRAJSTORE_WRITE_WORKERS",
    type=click.IntRange(min=1),
    default=None,
    show_envvar=True,
    help=(
        "Threads of --max-workers reserved for ingest calls (each writer holds one) "
        "[default: all but a quarter]."
    ),
)
@click.option(
    "--max-reads-per-peer",
    envvar="TRAJSTORE_MAX_READS_PER_PEER",
    type=click.IntRange(min=1),
    default=None,
    show_envvar=True,
    help=(
        "Read calls one client host may have open at once "
        "[default: the whole read share, i.e. no cap of its own]."
    ),
)
@click.option(
    "--idle-stream-seconds",
    envvar="TRAJSTORE_IDLE_STREAM_SECONDS",
    type=click.FloatRange(min=0, min_open=True),
    default=120.0,
    show_default=True,
    show_envvar=True,
    help=(
        "A read call waiting this long on its client (for a request, or to take "
        "a response) is ended; ingest calls are exempt."
    ),
)
@click.option(
    "--log-level",
    envvar="TRAJSTORE_LOG_LEVEL",
    default="INFO",
    show_default=True,
    show_envvar=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
@click.option(
    "--log-format",
    envvar="TRAJSTORE_LOG_FORMAT",
    default="text",
    show_default=True,
    show_envvar=True,
    type=click.Choice(["text", "json"]),
    help="json: one JSON object per line, with fields such as run, mode and peer.",
)
@click.option(
    "--tokens-file",
    envvar="TRAJSTORE_TOKENS_FILE",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    show_envvar=True,
    help="File of role:token entries (roles: read, write), one or more per line.",
)
@click.option(
    "--tokens",
    envvar="TRAJSTORE_TOKENS",
    default=None,
    show_envvar=True,
    help="role:token entries, comma separated (prefer the variable or a file).",
)
@click.option(
    "--tls-cert",
    envvar="TRAJSTORE_TLS_CERT",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    show_envvar=True,
    help="PEM certificate chain: serve TLS.",
)
@click.option(
    "--tls-key",
    envvar="TRAJSTORE_TLS_KEY",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    show_envvar=True,
    help="PEM private key of --tls-cert.",
)
@click.option(
    "--insecure",
    envvar="TRAJSTORE_INSECURE",
    is_flag=True,
    show_envvar=True,
    help="Allow listening beyond loopback without tokens (anyone may then write).",
)
@click.option(
    "--shutdown-grace",
    envvar="TRAJSTORE_SHUTDOWN_GRACE",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    show_envvar=True,
    help="Seconds open streams get to finish after SIGTERM before they are cut.",
)
@click.option(
    "--metrics-listen",
    envvar="TRAJSTORE_METRICS_LISTEN",
    default=None,
    show_envvar=True,
    help="host:port for a Prometheus /metrics endpoint (default: none).",
)
@click.option(
    "--processes",
    envvar="TRAJSTORE_PROCESSES",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    show_envvar=True,
    help="Store processes on this host sharing the data dir (one per core is the point), "
    "on consecutive ports from --listen's (port 0: each its own); clients are given the "
    "list printed at start.",
)
def serve(
    data_dir: Path,
    listen: str,
    flush_interval: float,
    flush_bytes: int,
    compress_threads: int | None,
    lease_seconds: float,
    max_message_bytes: int,
    max_frame_bytes: int,
    max_pending_bytes: int,
    max_open_runs: int,
    max_workers: int,
    write_workers: int | None,
    max_reads_per_peer: int | None,
    idle_stream_seconds: float,
    log_level: str,
    log_format: str,
    tokens_file: Path | None,
    tokens: str | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    insecure: bool,
    shutdown_grace: float,
    metrics_listen: str | None,
    processes: int,
) -> None:
    """Run a storage server until SIGTERM or SIGINT, then drain, flush and exit."""
    if processes > 1:
        _serve_processes(
            processes, data_dir, listen, metrics_listen, shutdown_grace, log_level, log_format
        )
        return
    from trajstore.allocator import keep_large_buffers
    from trajstore.server import Limits
    from trajstore.server import serve as start_server
    from trajstore.server.auth import Tokens

    _configure_logging(log_level, log_format)
    keep_large_buffers()
    limits = Limits(
        max_message_bytes=max_message_bytes,
        max_frame_bytes=max_frame_bytes,
        max_pending_bytes_per_run=max_pending_bytes,
        max_open_runs=max_open_runs,
    )
    try:
        access = Tokens.load(tokens_file, tokens)
        handle = start_server(
            data_dir,
            listen,
            limits=limits,
            flush_interval=flush_interval,
            flush_bytes=flush_bytes,
            compress_threads=compress_threads,
            lease_seconds=lease_seconds,
            max_workers=max_workers,
            write_workers=write_workers,
            max_reads_per_peer=max_reads_per_peer,
            idle_stream_seconds=idle_stream_seconds,
            metrics_listen=metrics_listen,
            tokens=access,
            tls_cert=tls_cert,
            tls_key=tls_key,
            insecure=insecure,
        )
    except OSError as e:
        raise click.ClickException(str(e)) from None
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    click.echo(
        f"trajstore serving on {handle.address} (data in {data_dir}; "
        f"{_access_text(bool(access), tls_cert is not None, insecure)})",
    )
    sys.stdout.flush()
    # Wake every second: a signal that reached one of gRPC's threads runs its
    # Python handler only once the main thread runs again, and an untimed wait
    # never does (seen after SIGSTOP/SIGCONT: SIGTERM then went unheard).
    from trajstore.server.processes import SUPERVISOR_ENV

    supervisor = int(os.environ.get(SUPERVISOR_ENV, "0"))
    while not stop.wait(1.0):
        if supervisor and os.getppid() != supervisor:
            click.echo("trajstore: the supervising process is gone", err=True)
            break
    click.echo("trajstore: stopping: draining streams, flushing runs", err=True)
    handle.stop(grace=shutdown_grace)
    # Every run is flushed and closed: leave without the interpreter's finalizers,
    # which would free HDF5 handles of any file a failed disk left unclosable.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _serve_processes(
    count: int,
    data_dir: Path,
    listen: str,
    metrics_listen: str | None,
    shutdown_grace: float,
    log_level: str,
    log_format: str,
) -> None:
    """``serve --processes N``: start N store processes, restart any that dies, stop them all."""
    from trajstore.server.processes import Supervisor, process_listens

    _configure_logging(log_level, log_format)
    try:
        listens = process_listens(listen, metrics_listen, count)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--listen/--metrics-listen") from None
    # Every setting reaches the processes through its environment variable
    # (an unset one through its absence: an empty variable would be a value).
    ctx = click.get_current_context()
    settings = {
        param.envvar: ctx.params.get(param.name)
        for param in ctx.command.params
        if isinstance(param.envvar, str) and param.name is not None
    }
    environment = {k: v for k, v in os.environ.items() if k not in settings}
    for envvar, value in settings.items():
        if value is not None and value is not False:
            environment[envvar] = "1" if value is True else str(value)
    from trajstore.server.auth import Tokens

    params = ctx.params
    try:
        tokens = Tokens.load(params.get("tokens_file"), params.get("tokens"))
    except (OSError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    access = _access_text(
        bool(tokens), params.get("tls_cert") is not None, bool(params.get("insecure"))
    )
    supervisor = Supervisor(listens, environment)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        addresses = supervisor.start()
    except RuntimeError as e:
        raise click.ClickException(str(e)) from None
    click.echo(
        f"trajstore serving on {','.join(addresses)} (data in {data_dir}; {count} processes; "
        f"{access})"
    )
    sys.stdout.flush()
    supervisor.watch(stop)
    click.echo(f"trajstore: stopping {count} store processes", err=True)
    code = supervisor.stop(grace=shutdown_grace)
    sys.exit(code)


def _access_text(tokens: bool, tls: bool, insecure: bool) -> str:
    """Who may call the store, for its start line."""
    if tokens:
        who = "tokens required"
    elif insecure:
        who = "no tokens: anyone who reaches it (--insecure)"
    else:
        who = "no tokens: loopback callers only"
    return f"{who}; {'TLS' if tls else 'plain text'}"


#: Attributes every LogRecord has: anything else was passed as ``extra``.
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}


class _TextFormatter(logging.Formatter):
    """Text log lines that also show the ``extra`` fields (run, peer, ...) as ``key=value``."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = [
            f"{key}={value!r}" if isinstance(value, str) and " " in value else f"{key}={value}"
            for key, value in vars(record).items()
            if key not in _RECORD_FIELDS and not key.startswith("_")
        ]
        if not fields:
            return line
        head, sep, trace = line.partition("\n")
        return f"{head} {' '.join(fields)}{sep}{trace}"


def _configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


# ------------------------------------------------- commands that call a store

address_option = click.option(
    "--address",
    envvar="TRAJSTORE_ADDRESS",
    default="127.0.0.1:50051",
    show_default=True,
    show_envvar=True,
    help="host:port of the store; several stores: a comma list or a dns:/// name.",
)
token_option = click.option(
    "--token",
    envvar="TRAJSTORE_TOKEN",
    default=None,
    show_envvar=True,
    help="Bearer token, if the store requires one.",
)
tls_option = click.option(
    "--tls-ca",
    envvar="TRAJSTORE_TLS_CA",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    show_envvar=True,
    help="CA certificate (PEM): connect with TLS.",
)


@main.command()
@address_option
@tls_option
@click.option("--timeout", type=float, default=5.0, show_default=True)
def health(address: str, tls_ca: Path | None, timeout: float) -> None:
    """Exit 0 if the store answers SERVING on the gRPC health service (for HEALTHCHECK).

    A store serving TLS is checked with the CA to trust (``--tls-ca`` or
    ``TRAJSTORE_TLS_CA``); its certificate must name the address checked.
    """
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from trajstore.client.channel import open_channel

    with open_channel(address, tls_ca) as channel:
        try:
            status = (
                health_pb2_grpc.HealthStub(channel)
                .Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
                .status
            )
        except grpc.RpcError as e:
            message = f"the store at {address} does not answer: {e.code().name}"
            raise click.ClickException(message) from None
    if status != health_pb2.HealthCheckResponse.SERVING:
        raise click.ClickException(f"the store at {address} is not serving")
    click.echo("SERVING")


def _client(address: str, token: str | None, tls_ca: Path | None) -> Client:
    from trajstore.client.reader import connect

    return connect(address, token=token, tls_ca=tls_ca)


def _age(seconds: float) -> str:
    delta = max(time.time() - seconds, 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= size:
            return f"{delta / size:.0f}{unit} ago"
    return f"{delta:.0f}s ago"


@main.command("ls")
@click.option("--prefix", default="", help="Only runs whose name starts with this.")
@address_option
@token_option
@tls_option
def list_runs(prefix: str, address: str, token: str | None, tls_ca: Path | None) -> None:
    """List the runs on the store: frames per group, state, size, last update."""
    with _client(address, token, tls_ca) as client:
        runs = client.list_runs(prefix)
    if not runs:
        click.echo("no runs")
        return
    width = max(len(r.name) for r in runs)
    click.echo(f"{'RUN':{width}}  STATE    {'SIZE':>9}  {'UPDATED':>9}  FRAMES")
    for r in runs:
        frames = ", ".join(f"{name.removeprefix('group')}={n}" for name, n in r.frames.items())
        state = "damaged" if r.damaged else "open" if r.open else "closed"
        if r.damaged:
            frames = r.problem
        click.echo(
            f"{r.name:{width}}  {state:7}  {r.size_bytes / 1e6:7.1f}MB  "
            f"{_age(r.updated):>9}  {frames}"
        )


@main.command()
@click.argument("run")
@address_option
@token_option
@tls_option
def info(run: str, address: str, token: str | None, tls_ca: Path | None) -> None:
    """Show a run's schema, metadata and state."""
    with _client(address, token, tls_ca) as client, client.open_run(run) as reader:
        state = reader.describe()
        click.echo(
            f"run       {run} ({'open' if state.open else 'closed'}, "
            f"{state.size_bytes / 1e6:.1f} MB, {state.actual_steps} steps)"
        )
        click.echo(f"metadata  {json.dumps(reader.metadata)}")
        for group in reader.spec.groups:
            frequency = group.frequency.get("kind", "?")
            if "n" in group.frequency:
                frequency += f"({group.frequency['n']})"
            codec = group.compression.codec if group.compression else "none"
            click.echo(f"{group.name}: {state.frames[group.name]} frames, {frequency}, {codec}")
            for leaf in group.leaves:
                click.echo(f"    {leaf.path or '<value>':24} {leaf.dtype:9} {list(leaf.shape)}")


def _describe_leaf(value: Any) -> str:
    array = np.asarray(value)
    if array.ndim == 0:
        return f"{array.item():.6g}" if array.dtype.kind in "fc" else str(array.item())
    if array.size and array.dtype.kind in "biuf":
        return f"{array.dtype}{list(array.shape)} mean {float(np.mean(array)):.4g}"
    return f"{array.dtype}{list(array.shape)}"


@main.command()
@click.argument("run")
@click.argument("group")
@click.option(
    "--from-step",
    "from_step",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Start at the first frame logged at or after this step.",
)
@click.option("--summary", is_flag=True, help="Print a summary every second, not every frame.")
@address_option
@token_option
@tls_option
def tail(
    run: str,
    group: str,
    from_step: int,
    summary: bool,
    address: str,
    token: str | None,
    tls_ca: Path | None,
) -> None:
    """Follow a group of a run live: one line per frame, its step first, until the run closes.

    GROUP is the group's path, such as "energy", or its name, "group['energy']".
    Groups of a custom frequency are numbered by frame (their steps are not stored).
    """
    import jax

    with _client(address, token, tls_ca) as client, client.open_run(run) as reader:
        focused = reader.focus_group(group)
        interval = step_interval(focused.spec)
        start = -(-from_step // interval) if interval else from_step
        count, last_print = 0, time.monotonic()
        for frame in focused.follow(start=start):
            index = start + count
            count += 1
            where = f"step {index * interval}" if interval else f"frame {index}"
            if not summary:
                paths = jax.tree_util.tree_flatten_with_path(frame)[0]
                text = "  ".join(
                    f"{jax.tree_util.keystr(p) or 'value'}={_describe_leaf(v)}" for p, v in paths
                )
                click.echo(f"{where:>14}  {text}")
            elif time.monotonic() - last_print >= 1:
                click.echo(f"{count} frames so far (last: {where})")
                last_print = time.monotonic()
        click.echo(f"{count} frames; the run is closed", err=summary is False)


@main.command()
@click.argument("run")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Local HDF5 file to write (its directory must exist).",
)
@click.option("--force", is_flag=True, help="Replace the output file if it exists.")
@address_option
@token_option
@tls_option
def pull(
    run: str, output: Path, force: bool, address: str, token: str | None, tls_ca: Path | None
) -> None:
    """Download a run into a local HDF5 file (progress bar on a terminal)."""
    from trajstore.allocator import keep_large_buffers

    keep_large_buffers()  # a process of its own, reading in large messages
    with _client(address, token, tls_ca) as client:
        path = client.pull(run, output, overwrite=force)
    click.echo(f"wrote {path}")


@main.command()
@click.argument("journal", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "--address",
    envvar="TRAJSTORE_ADDRESS",
    default=None,
    show_envvar=True,
    help="host:port of the store, a comma list or a dns:/// name "
    "[default: the one the writer used].",
)
@token_option
@tls_option
@click.option(
    "--wait",
    type=float,
    default=120.0,
    show_default=True,
    help="Seconds to retry while the store is away or the run is still held.",
)
@click.option("--keep", is_flag=True, help="Keep the journal after uploading it.")
def push(
    journal: Path,
    address: str | None,
    token: str | None,
    tls_ca: Path | None,
    wait: float,
    keep: bool,
) -> None:
    """Upload a spill journal a writer left while the store was away, then delete it.

    A journal with a torn end (its writer was killed mid-record) is kept.
    """
    from trajstore.client.push import push_journal

    result = push_journal(journal, address, token=token, tls_ca=tls_ca, wait=wait, keep=keep)
    click.echo(
        f"pushed {result.frames_sent} frames in {result.blocks_sent} blocks to "
        f"{result.run!r} on {result.address} ({result.blocks_skipped} blocks already there)"
    )
    if result.damaged_bytes:
        click.echo(
            f"warning: {result.damaged_bytes} torn bytes at the end were left out; "
            f"the journal was kept ({journal})",
            err=True,
        )


@main.command()
@click.argument("run")
@click.argument("group")
@click.option("--field", default=None, help="Leaf to plot, by path: total, a/b or ['total'].")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="PNG file to write.",
)
@address_option
@token_option
@tls_option
def plot(
    run: str,
    group: str,
    field: str | None,
    output: Path,
    address: str,
    token: str | None,
    tls_ca: Path | None,
) -> None:
    """Plot a field of a group against the step (arrays: their mean per frame).

    The step on x, the field's name and units on y, the run and group in the title.
    """
    import matplotlib

    matplotlib.use("Agg")
    from trajstore.errors import FieldNotFoundError, SchemaError
    from trajstore.plotting import plot_field

    with _client(address, token, tls_ca) as client, client.open_run(run) as reader:
        try:
            figure = plot_field(reader.focus_group(group), field, run=run)
        except FieldNotFoundError as e:
            raise click.ClickException(f"{e} (--field)") from None
        except SchemaError as e:
            raise click.ClickException(str(e)) from None
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(output, dpi=100)
    except OSError as e:
        raise click.ClickException(f"cannot write {output}: {e}") from None
    click.echo(f"wrote {output}")


@main.command()
@click.option(
    "--nodes", type=click.IntRange(min=1), default=3, show_default=True, help="Simulation nodes."
)
@click.option(
    "--steps", type=click.IntRange(min=1), default=2000, show_default=True, help="Steps per run."
)
@click.option(
    "--side",
    type=click.IntRange(min=2),
    default=6,
    show_default=True,
    help="Particles per box edge (n = side^3).",
)
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo-output"),
    show_default=True,
    help="Where the plot goes.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The store's data dir (default: a new temporary one).",
)
def demo(nodes: int, steps: int, side: int, output_dir: Path, data_dir: Path | None) -> None:
    """A store, several LJ simulation nodes and an analyst, on this machine."""
    from trajstore.examples.demo import run_demo

    try:
        code = run_demo(
            nodes=nodes, steps=steps, side=side, output_dir=output_dir, data_dir=data_dir
        )
    except RuntimeError as e:  # the store did not start
        raise click.ClickException(str(e)) from None
    if code:
        raise click.ClickException("the demo failed (see above)")


if __name__ == "__main__":
    main()
