"""A TCP fault proxy for the chaos suite: put it between Kefu and Redis or PostgreSQL and break the link on demand.

Modes (switchable while connections are open):
- ``passthrough()``: bytes flow both ways.
- ``refuse()``: new connections are reset at once and open ones are cut (a server that is down).
- ``blackhole()``: new connections are accepted and open ones stay open, but nothing is forwarded or answered
  in either direction (a dropped route or a hung server: no RST, the client only learns by timing out).
"""

from __future__ import annotations

import select
import socket
import struct
import threading
from typing import Literal

Mode = Literal["passthrough", "refuse", "blackhole"]


class FaultProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._mode: Mode = "passthrough"
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket | None]] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept_loop, name="fault-proxy", daemon=True).start()

    # --- control -------------------------------------------------------------------------------------------
    @property
    def mode(self) -> Mode:
        return self._mode

    def passthrough(self) -> None:
        self._mode = "passthrough"

    def blackhole(self) -> None:
        self._mode = "blackhole"

    def refuse(self) -> None:
        self._mode = "refuse"
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for client, upstream in pairs:
            _reset(client)
            if upstream is not None:
                _reset(upstream)

    def url(self, scheme: str, path: str = "", userinfo: str = "") -> str:
        """``url("redis", "/3")`` → ``redis://127.0.0.1:PORT/3``."""
        at = f"{userinfo}@" if userinfo else ""
        return f"{scheme}://{at}127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self._closed = True
        self.refuse()
        self._listener.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- the proxy ------------------------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._mode == "refuse":
                _reset(client)
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        if self._mode == "passthrough":
            try:
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                _reset(client)
                return
        with self._lock:
            self._pairs.append((client, upstream))
        try:
            self._pump(client, upstream)
        finally:
            with self._lock:
                if (client, upstream) in self._pairs:
                    self._pairs.remove((client, upstream))
            for sock in (client, upstream):
                if sock is not None:
                    sock.close()

    def _pump(self, client: socket.socket, upstream: socket.socket | None) -> None:
        while not self._closed:
            socks = [client] if upstream is None else [client, upstream]
            try:
                readable, _, _ = select.select(socks, [], [], 0.2)
            except (OSError, ValueError):
                return
            for sock in readable:
                try:
                    data = sock.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                if self._mode != "passthrough" or upstream is None:
                    continue  # swallowed: a black hole answers nothing
                other = upstream if sock is client else client
                try:
                    other.sendall(data)
                except OSError:
                    return


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), as a crashed or refusing server does."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass
