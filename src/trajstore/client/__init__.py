"""Clients of the store: the remote writer and the remote readers."""

from trajstore.client.reader import (
    Client,
    RemoteGroupReader,
    RemoteStorageReader,
    RunInfo,
    connect,
)
from trajstore.client.writer import RemoteStorageWriter

__all__ = [
    "Client",
    "RemoteGroupReader",
    "RemoteStorageReader",
    "RemoteStorageWriter",
    "RunInfo",
    "connect",
]
