"""The HDF5 core: on-disk layout, block writes, background flushing, reads.

Knows nothing of JAX or gRPC: it stores flat numpy leaves described by the
specs of :mod:`trajstore.schema`. The local writer and the storage server
both write through it, so a run written either way is the same file.
"""

from trajstore.store.background import BackgroundWriter
from trajstore.store.reader import RunFileReader
from trajstore.store.writer import Hdf5ObjWriter, RunFileWriter

__all__ = ["BackgroundWriter", "Hdf5ObjWriter", "RunFileReader", "RunFileWriter"]
