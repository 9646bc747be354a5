"""Channels to the store, with the options and credentials every client call needs.

**Several stores.** An address may name several store processes sharing one
data directory: a comma list (``host1:50051,host2:50051``) or a ``dns:///``
name with several addresses (a compose service scaled up, a Kubernetes
headless Service). Each call about a run then goes to one of them chosen by
a hash of the run name -- gRPC's own ``ring_hash`` load balancing on the
:data:`ROUTING_HEADER` each such call carries -- so a run's writer and its
live readers meet in one process, and a writer that reconnects comes back
to the process holding its session. When a store goes away its runs move
to the others at once (and come back when it returns); calls about no run
(listing) go to any. Why gRPC's policy rather than hashing here: it already
re-resolves names, watches every backend's connection and moves calls off a
dead one within milliseconds; a hand-written rendezvous hash would have to
redo all of that. Where a call lands never decides who writes a run: the
run's lock does (``store/ownership.py``), so a misrouted call still works.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import grpc

from trajstore.errors import InvalidArgumentError

__all__ = [
    "CHANNEL_MESSAGE_BYTES",
    "KEEPALIVE_TIMEOUT_MS",
    "KEEPALIVE_TIME_MS",
    "ROUTING_HEADER",
    "StoreTarget",
    "call_metadata",
    "open_channel",
    "route_key",
    "store_target",
]

#: Metadata key whose value (a digest of the run name) picks a run's store.
ROUTING_HEADER = "x-trajstore-run"

#: gRPC's ring hash over the stores, keyed by :data:`ROUTING_HEADER`.
_RING_HASH_CONFIG = json.dumps(
    {"loadBalancingConfig": [{"ring_hash_experimental": {"requestHashHeader": ROUTING_HEADER}}]}
)

#: gRPC (1.85) honours ``requestHashHeader`` only with this set before channels are made.
_RING_HASH_SWITCH = "GRPC_EXPERIMENTAL_RING_HASH_SET_REQUEST_HASH_KEY"

#: Largest message a client channel sends or accepts; the server's own limit
#: (learned when a run opens) decides how large parts really are.
CHANNEL_MESSAGE_BYTES = 256 << 20

#: While a call is open the channel pings the store this often, and gives up
#: on a store that does not answer within ``KEEPALIVE_TIMEOUT_MS``: a Read,
#: a follow or a write stream to a host that vanished fails with
#: ``UnavailableError`` instead of waiting forever. (The store accepts pings
#: this often: ``server.app.KEEPALIVE_OPTIONS``.)
KEEPALIVE_TIME_MS = 30_000
KEEPALIVE_TIMEOUT_MS = 10_000


@dataclass(frozen=True)
class StoreTarget:
    """Where a channel connects, as gRPC names it.

    Attributes:
        target: The gRPC target (``host:port``, ``dns:///name:port``, ``ipv4:a:p,b:p``).
        routed: Whether it may reach several stores (calls are then routed by run).
        authority: The name TLS checks the stores' certificate against, for a
            list given by host names ('' to let gRPC take it from the target).
    """

    target: str
    routed: bool
    authority: str = ""


#: Port of ``trajstore serve`` unless told otherwise.
DEFAULT_PORT = 50051
#: gRPC targets passed on as they are.
_TARGET_SCHEMES = ("unix:", "unix-abstract:", "ipv4:", "ipv6:", "vsock:")


def _split_host_port(item: str) -> tuple[str, int]:
    host, sep, port = item.rpartition(":")
    if (not sep or not port.isdigit()) and item and "/" not in item:
        # gRPC would take a bare name for host:443, which no store listens on.
        raise InvalidArgumentError(
            f"store address {item!r} has no port: write host:port (a store listens on "
            f"{DEFAULT_PORT} unless told otherwise: {item}:{DEFAULT_PORT})"
        )
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgumentError(f"store address {item!r} is not host:port")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _resolve(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise InvalidArgumentError(f"cannot resolve store host {host!r}: {e}") from None
    found = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if address not in found:
            found.append(address)
    return found


def store_target(address: str) -> StoreTarget:
    """The gRPC target for ``address``: one store, a comma list, or a ``dns:///`` name.

    A list is resolved now into one ``ipv4:``/``ipv6:`` target of every
    address its names have (IPv4 where both exist: a gRPC target holds one
    family); a ``dns:///`` name is left to gRPC, which resolves it again
    whenever a store goes away.

    Raises:
        InvalidArgumentError: The address (or an item of a list) is not
            ``host:port``, or a listed host does not resolve.
    """
    address = address.strip()
    if address.startswith("dns:"):
        return StoreTarget(address, routed=True)
    if "," not in address:
        if not address.startswith(_TARGET_SCHEMES):
            _split_host_port(address)
        return StoreTarget(address, routed=False)
    items = [item.strip() for item in address.split(",") if item.strip()]
    if not items:
        raise InvalidArgumentError(f"no store in address {address!r}")
    resolved = []
    names = []
    for item in items:
        host, port = _split_host_port(item)
        resolved += [(ip, port) for ip in _resolve(host, port)]
        try:
            ipaddress.ip_address(host)
        except ValueError:
            names.append(host)
    v4 = [(ip, port) for ip, port in resolved if ip.version == 4]
    if v4:
        target = "ipv4:" + ",".join(f"{ip}:{port}" for ip, port in dict.fromkeys(v4))
    else:
        target = "ipv6:" + ",".join(f"[{ip}]:{port}" for ip, port in dict.fromkeys(resolved))
    return StoreTarget(target, routed=True, authority=names[0] if names else "")


def open_channel(address: str, tls_ca: str | os.PathLike[str] | None = None) -> grpc.Channel:
    """A channel to ``address`` sized for large messages.

    Args:
        address: The store: ``host:port``; or several (``host1:port,host2:port``
            or a ``dns:///`` name), routed by run (see the module docstring).
        tls_ca: PEM file of the certificate authority to trust: connect with
            TLS (default: ``TRAJSTORE_TLS_CA``; neither: plain text).

    Raises:
        InvalidArgumentError: ``address`` is a list that cannot be resolved.
    """
    where = store_target(address)
    options: list[tuple[str, str | int]] = [
        ("grpc.max_send_message_length", CHANNEL_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", CHANNEL_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.http2.max_pings_without_data", 0),  # also while a follow waits for frames
    ]
    if where.routed:
        os.environ.setdefault(_RING_HASH_SWITCH, "true")
        options.append(("grpc.service_config", _RING_HASH_CONFIG))
    ca = tls_ca or os.environ.get("TRAJSTORE_TLS_CA")
    if ca:
        if where.authority:
            options.append(("grpc.ssl_target_name_override", where.authority))
        credentials = grpc.ssl_channel_credentials(root_certificates=Path(ca).read_bytes())
        return grpc.secure_channel(where.target, credentials, options=options)
    return grpc.insecure_channel(where.target, options=options)


def route_key(run: str) -> str:
    """The :data:`ROUTING_HEADER` value of ``run``: a digest (header values must be ASCII)."""
    return hashlib.blake2b(run.encode(), digest_size=8).hexdigest()


def call_metadata(token: str | None, run: str | None = None) -> tuple[tuple[str, str], ...]:
    """Metadata sent with a call.

    The bearer token (default: ``TRAJSTORE_TOKEN``), and for a call about one
    run (``run``), the key that routes it to that run's store.
    """
    token = token or os.environ.get("TRAJSTORE_TOKEN")
    metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
    if run is not None:
        metadata += ((ROUTING_HEADER, route_key(run)),)
    return metadata
