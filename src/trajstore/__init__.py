"""trajstore: store the trajectories of JAX simulations, locally or on a central store.

The local API is that of ``kups.core.storage``::

    from trajstore import HDF5StorageWriter, WriterGroupConfig, EveryNStep, view

Names are imported lazily, so that parts which do not need JAX (the HDF5
core, the storage server) can be used without importing it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    # what to log and when
    "Logger",
    "LoggingFrequency",
    "Once",
    "EveryNStep",
    "Compression",
    "WriterGroupConfig",
    "view",
    # local files
    "HDF5StorageWriter",
    "HDF5StorageReader",
    "GroupReader",
    "BackgroundWriter",
    "Hdf5ObjWriter",
    "GroupWriters",
    # the network
    "RemoteStorageWriter",
    "RemoteStorageReader",
    "RemoteGroupReader",
    "connect",
    "serve",
    # analysis (the ``analysis`` extra: xarray, dask)
    "open_runs",
    "keep_large_buffers",
    # errors
    "TrajstoreError",
]

_LOCATIONS = {
    "Logger": "trajstore.config",
    "WriterGroupConfig": "trajstore.config",
    "LoggingFrequency": "trajstore.frequency",
    "Once": "trajstore.frequency",
    "EveryNStep": "trajstore.frequency",
    "Compression": "trajstore.compression",
    "view": "trajstore.pytree",
    "HDF5StorageWriter": "trajstore.local",
    "HDF5StorageReader": "trajstore.local",
    "GroupReader": "trajstore.reading",
    "BackgroundWriter": "trajstore.store.background",
    "Hdf5ObjWriter": "trajstore.store.writer",
    "GroupWriters": "trajstore.groups",
    "TrajstoreError": "trajstore.errors",
    "keep_large_buffers": "trajstore.allocator",
    "RemoteStorageWriter": "trajstore.client.writer",
    "RemoteStorageReader": "trajstore.client.reader",
    "RemoteGroupReader": "trajstore.client.reader",
    "connect": "trajstore.client.reader",
    "serve": "trajstore.server.app",
    "open_runs": "trajstore.xarray_backend",
}

if TYPE_CHECKING:
    from trajstore.allocator import keep_large_buffers
    from trajstore.client.reader import RemoteGroupReader, RemoteStorageReader, connect
    from trajstore.client.writer import RemoteStorageWriter
    from trajstore.compression import Compression
    from trajstore.config import Logger, WriterGroupConfig
    from trajstore.errors import TrajstoreError
    from trajstore.frequency import EveryNStep, LoggingFrequency, Once
    from trajstore.groups import GroupWriters
    from trajstore.local import HDF5StorageReader, HDF5StorageWriter
    from trajstore.pytree import view
    from trajstore.reading import GroupReader
    from trajstore.server.app import serve
    from trajstore.store.background import BackgroundWriter
    from trajstore.store.writer import Hdf5ObjWriter
    from trajstore.xarray_backend import open_runs


def __getattr__(name: str) -> Any:
    module = _LOCATIONS.get(name)
    if module is None:
        raise AttributeError(f"module 'trajstore' has no attribute {name!r}")
    # Only the fixed module names of _LOCATIONS are ever imported here.
    value = getattr(importlib.import_module(module), name)  # allowed-import: fixed names
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
