"""Channels to the store, with the options and credentials every client call needs."""

from __future__ import annotations

import grpc

__all__ = ["CHANNEL_MESSAGE_BYTES", "call_metadata", "open_channel"]

#: Largest message a client channel sends or accepts; the server's own limit
#: (learned when a run opens) decides how large parts really are.
CHANNEL_MESSAGE_BYTES = 256 << 20


def open_channel(address: str) -> grpc.Channel:
    """An insecure channel to ``address`` (``host:port``) sized for large messages."""
    return grpc.insecure_channel(
        address,
        options=[
            ("grpc.max_send_message_length", CHANNEL_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", CHANNEL_MESSAGE_BYTES),
        ],
    )


def call_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """Metadata sent with every call: the bearer token, if any."""
    return (("authorization", f"Bearer {token}"),) if token else ()
