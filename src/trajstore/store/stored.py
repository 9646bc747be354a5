"""Encode a chunk through its filter pipeline here rather than in HDF5.

Two uses, both written with ``write_direct_chunk`` and read back by any
HDF5 reader through the pipeline's own decoders (shuffle, deflate, zstd):

- :func:`encode_stored`, *without compressing*: a chunk that is still
  filling up is rewritten at every flush. Compressed, each rewrite has a new
  size, and HDF5 moves it to new file space without ever reclaiming the old:
  a run flushed often grows far beyond its data. Stored, its size depends
  only on its shape, so HDF5 rewrites it in place. It stays stored once
  full: in SWMR mode HDF5 does not free a rewritten chunk's old space when
  its size changes either, so compressing it then would leak the stored
  chunk. Chunks written whole in one block are compressed.
- :func:`encode_compressed`: full chunks compressed outside HDF5, whose
  filters run on one thread under h5py's global lock. zstd (python-zstandard)
  and zlib release the GIL, so the store compresses a block's chunks on
  several cores and then only writes them.
"""

from __future__ import annotations

import struct
import threading
import zlib

import numpy as np
import zstandard

__all__ = [
    "FILTER_DEFLATE",
    "FILTER_SHUFFLE",
    "FILTER_ZSTD",
    "encode_compressed",
    "encode_stored",
]

FILTER_DEFLATE = 1
FILTER_SHUFFLE = 2
FILTER_ZSTD = 32015

_ZSTD_MAGIC = 0xFD2FB528
_ZSTD_MAX_BLOCK = 1 << 17
# Frame header descriptor: single segment, 8-byte frame content size.
_ZSTD_DESCRIPTOR = 0xE0


def _zstd_raw_frame(data: bytes | memoryview) -> bytes:
    """A zstd frame that stores ``data`` in raw (uncompressed) blocks."""
    parts: list[bytes | memoryview] = [
        struct.pack("<IBQ", _ZSTD_MAGIC, _ZSTD_DESCRIPTOR, len(data))
    ]
    offsets = range(0, max(len(data), 1), _ZSTD_MAX_BLOCK)
    for i, start in enumerate(offsets):
        block = data[start : start + _ZSTD_MAX_BLOCK]
        last = i == len(offsets) - 1
        header = (len(block) << 3) | int(last)  # block type 0: raw
        parts.append(header.to_bytes(3, "little"))
        parts.append(block)
    return b"".join(parts)


def _shuffle(data: bytes | memoryview, itemsize: int) -> bytes | memoryview:
    """HDF5's byte-shuffle: all first bytes of each element, then all second bytes, ..."""
    n = len(data) // itemsize
    if itemsize <= 1 or n <= 1:
        return data
    raw = np.frombuffer(data, np.uint8)
    head = raw[: n * itemsize].reshape(n, itemsize).T.tobytes()
    if n * itemsize == len(raw):
        return head
    return head + raw[n * itemsize :].tobytes()


def _encode(
    chunk: np.ndarray, filters: list[tuple[int, tuple[int, ...]]], *, compress: bool
) -> bytes | None:
    """``chunk`` through ``filters`` (compressing filters at level 0 unless ``compress``)."""
    data: bytes | memoryview = np.ascontiguousarray(chunk).reshape(-1).view(np.uint8).data
    for filter_id, client_data in filters:
        if filter_id == FILTER_SHUFFLE:
            data = _shuffle(data, client_data[0] if client_data else chunk.dtype.itemsize)
        elif filter_id == FILTER_DEFLATE:
            data = zlib.compress(data, (client_data[0] if client_data else 6) if compress else 0)
        elif filter_id == FILTER_ZSTD:
            if compress:
                data = _zstd_compress(data, client_data[0] if client_data else 3)
            else:
                data = _zstd_raw_frame(data)
        else:
            return None
    return bytes(data)  # a copy only where no filter made one


def encode_stored(chunk: np.ndarray, filters: list[tuple[int, tuple[int, ...]]]) -> bytes | None:
    """Bytes of ``chunk`` encoded through ``filters`` without compression.

    Args:
        chunk: The whole chunk, in its storage dtype.
        filters: The pipeline as ``(filter id, client data)`` pairs, in order.

    Returns:
        The encoded chunk, or ``None`` if the pipeline holds a filter this
        module cannot emulate (the caller then writes the usual way).
    """
    return _encode(chunk, filters, compress=False)


_compressors = threading.local()  # a ZstdCompressor is not safe to share between threads


def _zstd_compress(data: bytes | memoryview, level: int) -> bytes:
    cache: dict[int, zstandard.ZstdCompressor] = _compressors.__dict__.setdefault("by_level", {})
    compressor = cache.get(level)
    if compressor is None:
        compressor = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return compressor.compress(data)


def encode_compressed(
    chunk: np.ndarray, filters: list[tuple[int, tuple[int, ...]]]
) -> bytes | None:
    """Bytes of ``chunk`` encoded through ``filters``, compressed as HDF5 would.

    Thread-safe; the compression itself runs without the GIL. Returns
    ``None`` for a pipeline with a filter this module does not know.
    """
    return _encode(chunk, filters, compress=True)
