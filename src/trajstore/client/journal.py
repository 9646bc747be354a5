"""The spill journal: blocks a writer could not deliver, kept on local disk.

When the store stays unreachable past the writer's ``reconnect_timeout`` and
the writer was given a ``journal`` path, the blocks it holds and every block
it seals afterwards go to this file instead of memory, so ``log()`` keeps
working at disk speed. Once the store answers again the writer uploads the
journal in order and deletes it when the store has acknowledged its last
block. A journal left behind (the simulation ended, or its process died,
while the store was still away) is uploaded with ``trajstore push JOURNAL``
(:func:`trajstore.client.push.push_journal`).

The format is append-only, so that a process killed while writing loses at
most the record it was writing::

    MAGIC
    record*        record = u32 header length | u64 payload length
                            | header (JSON object) | payload | u32 CRC-32

all little-endian; the CRC covers header and payload. The first record is
``{"kind": "open", "run", "address", "created"}`` whose payload is the
serialised ``OpenRunRequest`` (run name and schema; protobuf, never pickle).
Then come ``{"kind": "block", "number", "group", "start", "count",
"actual_steps"}`` records whose payload is the block exactly as it travels
(each leaf's frames, concatenated), and, when the writer closed cleanly
while the store was away, one ``{"kind": "end", "actual_steps"}``. A torn
or damaged record ends the readable part: everything before it is intact.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from trajstore.durable import sync_directory
from trajstore.errors import JournalError
from trajstore.v1 import ingest_pb2 as pb

__all__ = ["JournalBlock", "JournalEnd", "JournalReader", "JournalWriter"]

MAGIC = b"TRAJSTORE-JOURNAL v1\n"
_LENGTHS = struct.Struct("<IQ")
_CRC = struct.Struct("<I")
#: Bound on a record's JSON header; anything larger is damage, not data.
_MAX_HEADER_BYTES = 1 << 16
_BLOCK_FIELDS = ("number", "group", "start", "count", "actual_steps")


@dataclass(frozen=True)
class JournalBlock:
    """One block as the writer sealed it."""

    number: int
    group: int
    start: int
    count: int
    actual_steps: int
    payload: bytes


@dataclass(frozen=True)
class JournalEnd:
    """The writer closed while the store was away; ``actual_steps`` is final."""

    actual_steps: int


class JournalWriter:
    """Creates a journal file and appends records to it (not thread-safe).

    Args:
        path: The file to create; an existing file is never overwritten.
        address: The store the run belongs to (a default for ``push``).
        open_request: The run name and schema, to open the run again in
            ``append`` mode when uploading.
    """

    def __init__(self, path: str | os.PathLike[str], address: str, open_request: pb.OpenRunRequest):
        self.path = Path(path)
        self._failed_at: int | None = None
        self._failure = ""  # what went wrong at _failed_at
        try:
            self._file: BinaryIO = open(self.path, "xb")  # noqa: SIM115 - kept open for appends
        except FileExistsError:
            raise JournalError(
                f"journal {self.path} already exists: upload it first with "
                f"`trajstore push {self.path}`, or choose another path"
            ) from None
        except OSError as e:
            raise JournalError(f"cannot create journal {self.path}: {e}") from None
        header = {
            "kind": "open",
            "run": open_request.run,
            "address": address,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self._file.write(MAGIC)
        self._append(header, [open_request.SerializeToString()])
        self.sync()
        sync_directory(self.path.parent)

    @property
    def size(self) -> int:
        """Bytes written so far (every record up to here is complete)."""
        return self._file.tell()

    def append_block(
        self,
        number: int,
        group: int,
        start: int,
        count: int,
        actual_steps: int,
        parts: Iterable[bytes | memoryview],
    ) -> int:
        """Append one block record (its payload in ``parts``); returns its offset."""
        offset = self.size
        header = {
            "kind": "block",
            "number": number,
            "group": group,
            "start": start,
            "count": count,
            "actual_steps": actual_steps,
        }
        self._append(header, list(parts))
        return offset

    def append_end(self, actual_steps: int) -> None:
        """Record that the writer closed, with its final step count."""
        self._append({"kind": "end", "actual_steps": actual_steps}, [])

    def sync(self) -> None:
        """Make everything appended so far durable on disk."""
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as e:
            raise JournalError(f"cannot sync journal {self.path}: {e}") from None

    def close(self) -> None:
        """Sync and close the file, which stays on disk."""
        if self._file.closed:
            return
        try:
            self.sync()
        finally:
            with contextlib.suppress(OSError):
                self._file.close()

    def remove(self) -> None:
        """Close and delete the file (everything in it reached the store)."""
        self._file.close()
        self.path.unlink(missing_ok=True)

    def _append(self, header: dict[str, Any], parts: list[bytes | memoryview]) -> None:
        if self._failed_at is not None:
            # The first failure's words: whichever thread reports this one, the cause shows.
            raise JournalError(
                f"{self._failure} (at byte {self._failed_at}; nothing more is appended after it)"
            )
        start = self._file.tell()
        encoded = json.dumps(header, separators=(",", ":")).encode()
        length = sum(memoryview(p).nbytes for p in parts)
        crc = zlib.crc32(encoded)
        for part in parts:
            crc = zlib.crc32(part, crc)
        try:
            self._file.write(_LENGTHS.pack(len(encoded), length))
            self._file.write(encoded)
            for part in parts:
                self._file.write(part)
            self._file.write(_CRC.pack(crc))
            self._file.flush()  # readers of the same file see whole records
        except OSError as e:
            # A torn record ends what readers see: never append after one.
            self._failed_at = start
            self._failure = f"cannot write journal {self.path}: {e}"
            raise JournalError(self._failure) from None


class JournalReader:
    """Reads a journal: its open record, then blocks from any record offset.

    Raises :class:`~trajstore.errors.JournalError` when the file is not a
    journal or its open record is damaged. A damaged or torn later record
    ends the readable part (see :attr:`damaged_bytes`).
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        try:
            self._file: BinaryIO = open(self.path, "rb")  # noqa: SIM115 - closed by close()
        except OSError as e:
            raise JournalError(f"cannot open journal {self.path}: {e}") from None
        #: Bytes after the last intact record (a torn or damaged tail), once read through.
        self.damaged_bytes = 0
        if self._file.read(len(MAGIC)) != MAGIC:
            self.close()
            raise JournalError(f"{self.path} is not a trajstore journal")
        record = self._read_record(len(MAGIC))
        if record is None or record[0].get("kind") != "open":
            self.close()
            raise JournalError(f"journal {self.path}: the open record is missing or damaged")
        header, payload, self.first_offset = record
        self.run = _field(header, "run", str)
        self.address = _field(header, "address", str)
        self.created = _field(header, "created", str)
        self.open_request = pb.OpenRunRequest()
        try:
            self.open_request.ParseFromString(payload)
        except Exception:  # protobuf's DecodeError; any failure is damage
            self.close()
            raise JournalError(f"journal {self.path}: the open record is damaged") from None

    def __enter__(self) -> JournalReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    def read_at(
        self, offset: int, end: int | None = None
    ) -> tuple[JournalBlock | JournalEnd, int] | None:
        """The record at ``offset`` and the offset after it; ``None`` at the end.

        ``end`` bounds the bytes considered complete (a journal still being
        written); past it, or at a torn or damaged record, returns ``None``.
        """
        record = self._read_record(offset, end)
        if record is None:
            return None
        header, payload, after = record
        kind = header.get("kind")
        if kind == "end":
            return JournalEnd(_field(header, "actual_steps", int)), after
        if kind != "block":
            raise JournalError(f"journal {self.path}: unknown record kind {kind!r}")
        number, group, start, count, steps = (_field(header, f, int) for f in _BLOCK_FIELDS)
        return JournalBlock(number, group, start, count, steps, payload), after

    def records(self) -> Iterator[tuple[int, JournalBlock | JournalEnd]]:
        """Every intact record after the open record, in order, with its offset."""
        offset = self.first_offset
        while (found := self.read_at(offset)) is not None:
            record, after = found
            yield offset, record
            offset = after
        self.damaged_bytes = os.fstat(self._file.fileno()).st_size - offset

    def _read_record(
        self, offset: int, end: int | None = None
    ) -> tuple[dict[str, Any], bytes, int] | None:
        limit = os.fstat(self._file.fileno()).st_size if end is None else end
        if offset + _LENGTHS.size > limit:
            return None
        self._file.seek(offset)
        header_len, payload_len = _LENGTHS.unpack(self._file.read(_LENGTHS.size))
        after = offset + _LENGTHS.size + header_len + payload_len + _CRC.size
        if header_len > _MAX_HEADER_BYTES or after > limit:
            return None
        encoded = self._file.read(header_len)
        payload = self._file.read(payload_len)
        (crc,) = _CRC.unpack(self._file.read(_CRC.size))
        if zlib.crc32(payload, zlib.crc32(encoded)) != crc:
            return None
        try:
            header = json.loads(encoded)
        except ValueError:
            return None
        if not isinstance(header, dict):
            return None
        return header, payload, after


def _field(header: dict[str, Any], name: str, kind: type) -> Any:
    """``header[name]`` if it is a ``kind`` (ints: not negative); else the journal is damaged."""
    value = header.get(name)
    valid = isinstance(value, kind) and not isinstance(value, bool)
    if valid and isinstance(value, int) and value < 0:
        valid = False
    if not valid:
        raise JournalError(f"journal record field {name!r} is missing or invalid: {value!r}")
    return value
