"""A TCP forwarder between a client and a store, whose connections a test can break.

Breaking the network between a writer and a store that stays up (unlike a
store killed and restarted) leaves the writer's session held on the store:
the writer's reconnection then takes it over, as after a real network drop.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target`` (``host:port``) on threads of its own.

    :meth:`reset` breaks every open connection (a TCP reset, as a network
    drop); :meth:`refuse` makes it close each new connection at once until
    :meth:`accept` (a network still down).
    """

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._refusing = False
        self._closed = False
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                refusing = self._refusing or self._closed
            if refusing:
                _abort(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=30)
            except OSError:
                _abort(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(1 << 16):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with self._lock:
                    self._sockets.discard(s)
                _abort(s)

    def reset(self) -> None:
        """Break every connection open now."""
        with self._lock:
            sockets = list(self._sockets)
            self._sockets.clear()
        for s in sockets:
            _abort(s)

    def refuse(self) -> None:
        """Break every connection and refuse new ones until :meth:`accept`."""
        with self._lock:
            self._refusing = True
        self.reset()

    def accept(self) -> None:
        """Forward new connections again."""
        with self._lock:
            self._refusing = False

    def close(self) -> None:
        with self._lock:
            self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        self._listener.close()
        self.reset()
        self._thread.join(30)


def _abort(s: socket.socket) -> None:
    """Close with a reset (``SO_LINGER`` 0): the peer sees the connection break at once."""
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        s.close()
