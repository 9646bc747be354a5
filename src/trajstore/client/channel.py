"""Channels to the store, with the options and credentials every client call needs."""

from __future__ import annotations

import os
from pathlib import Path

import grpc

__all__ = ["CHANNEL_MESSAGE_BYTES", "call_metadata", "open_channel"]

#: Largest message a client channel sends or accepts; the server's own limit
#: (learned when a run opens) decides how large parts really are.
CHANNEL_MESSAGE_BYTES = 256 << 20


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
