"""Where a run is, as plain data that pickles, and this process's open handle of it.

A :class:`RunLocation` travels inside dask graphs (see
:mod:`trajstore.xarray_backend`): a path, or a store's address and a run
name, never an open file or connection, and a token only where the caller
asked for it. :func:`handle_of` gives the handle a location has in the
process that reads: the one registered by the process that opened the
dataset, or one opened at first use in another (a dask worker).
"""

from __future__ import annotations

import os
import secrets
import threading
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from trajstore.client.reader import RemoteStorageReader
from trajstore.errors import InvalidArgumentError, NotOpenError
from trajstore.store.reader import RunFileReader

__all__ = ["SCHEME", "Handle", "Opened", "RunLocation", "handle_of", "register", "release"]

#: The URL scheme of runs on a store: ``trajstore://host:port/run/name``.
SCHEME = "trajstore"

Handle = RunFileReader | RemoteStorageReader


@dataclass(frozen=True)
class RunLocation:
    """Where a run is, as plain data that pickles into a dask graph.

    Attributes:
        path: A local run file (absolute: workers may run elsewhere); or
        address: the store (``host:port``, a comma list, a ``dns:///`` name)
            and ``run`` the run's name there.
        tls_ca: CA certificate (PEM) for TLS to the store.
        token: Only where the caller asked to put it into the graph;
            otherwise a process that opens the run uses ``TRAJSTORE_TOKEN``.
        opening: Tells apart two openings of one run (each has its own
            handle in the process that opened it).
    """

    path: str | None = None
    address: str | None = None
    run: str | None = None
    tls_ca: str | None = None
    token: str | None = field(default=None, repr=False)
    opening: str = field(default_factory=lambda: secrets.token_hex(8))

    @classmethod
    def parse(
        cls,
        target: str | os.PathLike[str],
        *,
        tls_ca: str | os.PathLike[str] | None = None,
        token: str | None = None,
    ) -> RunLocation:
        """A path, or ``trajstore://host:port/run/name``.

        Raises:
            InvalidArgumentError: A ``trajstore://`` URL without an address
                or a run, or with parts a run has not (user, query, fragment).
        """
        text = os.fspath(target)
        if not text.startswith(f"{SCHEME}://"):
            return cls(path=os.path.abspath(text))
        parts = urlsplit(text)
        run = parts.path.lstrip("/")
        if not parts.netloc or not run or parts.query or parts.fragment or "@" in parts.netloc:
            raise InvalidArgumentError(
                f"{text!r} is not a run URL: expected {SCHEME}://host:port/run/name"
            )
        ca = None if tls_ca is None else os.fspath(tls_ca)
        return cls(address=parts.netloc, run=run, tls_ca=ca, token=token)

    @property
    def label(self) -> str:
        """How users name the run: its path, or ``trajstore://address/run``."""
        return self.path if self.path is not None else f"{SCHEME}://{self.address}/{self.run}"

    def open(self, token: str | None = None) -> Handle:
        """Open the run (in the process that reads it); ``token`` overrides the location's."""
        if self.path is not None:
            return RunFileReader(self.path)
        if self.address is None or self.run is None:
            raise InvalidArgumentError("a RunLocation needs a path, or an address and a run")
        return RemoteStorageReader(
            self.address, self.run, token=token or self.token, tls_ca=self.tls_ca
        ).__enter__()


@dataclass
class Opened:
    """A handle open in one process, and whether closing the dataset closes it."""

    pid: int
    handle: Handle
    owned: bool
    #: Held around each read of a local file (one HDF5 handle is not for
    #: threads) and around closing it.
    lock: threading.Lock = field(default_factory=threading.Lock)


def close_handle(handle: Handle) -> None:
    """Close a local file or a connection to the store."""
    if isinstance(handle, RunFileReader):
        handle.close()
    else:
        handle.__exit__(None, None, None)


class _Handles:
    """The open handle of each :class:`RunLocation` in this process (see the module docstring).

    A forked child never uses its parent's handles. Reading a dataset after
    closing it, in the process that opened it, raises
    :class:`~trajstore.errors.NotOpenError` instead of opening the run again.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[RunLocation, Opened] = {}
        self._closed: set[tuple[int, RunLocation]] = set()

    def register(self, location: RunLocation, handle: Handle, *, owned: bool) -> None:
        with self._lock:
            self._open[location] = Opened(os.getpid(), handle, owned)

    def get(self, location: RunLocation) -> Opened:
        pid = os.getpid()
        with self._lock:
            opened = self._open.get(location)
            if opened is not None and opened.pid == pid:
                return opened
            if (pid, location) in self._closed:
                raise NotOpenError(f"the dataset of {location.label} was closed")
        handle = location.open()  # outside the lock: a slow store holds up no other run
        with self._lock:
            opened = self._open.get(location)
            if opened is None or opened.pid != pid:  # first to open it here: keep it
                opened = self._open[location] = Opened(pid, handle, owned=True)
                return opened
        close_handle(handle)  # another thread opened it meanwhile
        return opened

    def release(self, location: RunLocation) -> None:
        pid = os.getpid()
        with self._lock:
            opened = self._open.pop(location, None)
            self._closed.add((pid, location))
        if opened is not None and opened.pid == pid and opened.owned:
            with opened.lock:  # after a read still going on in another thread
                close_handle(opened.handle)


_HANDLES = _Handles()


def register(location: RunLocation, handle: Handle, *, owned: bool) -> None:
    """Make ``handle`` this process's handle of ``location``; :func:`release` closes it if owned."""
    _HANDLES.register(location, handle, owned=owned)


def handle_of(location: RunLocation) -> Opened:
    """This process's handle of ``location``, opened here at first use where none was registered.

    Raises:
        NotOpenError: ``location`` was released in this process.
    """
    return _HANDLES.get(location)


def release(location: RunLocation) -> None:
    """Forget ``location`` in this process, closing its handle if it was registered as owned."""
    _HANDLES.release(location)
