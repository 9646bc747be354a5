"""Channels to the store, with the options and credentials every client call needs."""

from __future__ import annotations

import os
from pathlib import Path

import grpc

__all__ = [
    "CHANNEL_MESSAGE_BYTES",
    "KEEPALIVE_TIMEOUT_MS",
    "KEEPALIVE_TIME_MS",
    "call_metadata",
    "open_channel",
]

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


def open_channel(address: str, tls_ca: str | os.PathLike[str] | None = None) -> grpc.Channel:
    """A channel to ``address`` (``host:port``) sized for large messages.

    Args:
        address: The store.
        tls_ca: PEM file of the certificate authority to trust: connect with
            TLS (default: ``TRAJSTORE_TLS_CA``; neither: plain text).
    """
    options = [
        ("grpc.max_send_message_length", CHANNEL_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", CHANNEL_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.http2.max_pings_without_data", 0),  # also while a follow waits for frames
    ]
    ca = tls_ca or os.environ.get("TRAJSTORE_TLS_CA")
    if ca:
        credentials = grpc.ssl_channel_credentials(root_certificates=Path(ca).read_bytes())
        return grpc.secure_channel(address, credentials, options=options)
    return grpc.insecure_channel(address, options=options)


def call_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """Metadata sent with every call: the bearer token (default: ``TRAJSTORE_TOKEN``)."""
    token = token or os.environ.get("TRAJSTORE_TOKEN")
    return (("authorization", f"Bearer {token}"),) if token else ()
