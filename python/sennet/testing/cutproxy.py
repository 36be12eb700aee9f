"""A TCP proxy that cuts a connection after N bytes towards the client: a link that breaks.

Used to prove a download resumes: the first `cuts` connections are closed (both
ways, RST-free) once `cut_after` bytes of the server's answer went through;
later ones pass untouched. `sent` counts every byte the server's side handed to
clients, so a test can show how much was fetched twice.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator


class CutProxy:
    def __init__(self, target_port: int, cut_after: int, cuts: int = 1) -> None:
        self.target_port = target_port
        self.cut_after = cut_after
        self.cuts_left = cuts
        self.sent = 0
        self.connections = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                cut = self.cuts_left > 0
                self.cuts_left -= cut
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            limit = self.cut_after if cut else None
            for args in ((client, upstream, None, False), (upstream, client, limit, True)):
                threading.Thread(target=self._pipe, args=args, daemon=True).start()

    def _pipe(
        self, src: socket.socket, dst: socket.socket, limit: int | None, answer: bool
    ) -> None:
        """Copy src to dst; `answer`: this is the server's side (counted, maybe cut)."""
        passed = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if limit is not None and passed + len(data) >= limit:
                    data = data[: limit - passed]
                    dst.sendall(data)
                    self._count(len(data), answer)
                    break
                dst.sendall(data)
                passed += len(data)
                self._count(len(data), answer)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def _count(self, n: int, answer: bool) -> None:
        if answer:
            with self._lock:
                self.sent += n

    def start(self) -> CutProxy:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._listener.close()


@contextlib.contextmanager
def cut_proxy(target_port: int, cut_after: int, cuts: int = 1) -> Iterator[CutProxy]:
    proxy = CutProxy(target_port, cut_after, cuts).start()
    try:
        yield proxy
    finally:
        proxy.close()
