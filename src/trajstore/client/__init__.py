"""Clients of the store: the remote writer (and, later, remote readers)."""

from trajstore.client.writer import RemoteStorageWriter

__all__ = ["RemoteStorageWriter"]
