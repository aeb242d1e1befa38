"""A fault-injecting HTTP proxy on 127.0.0.1, in front of the S3 API server.

::

    s3fs / botocore  --HTTP-->  FaultProxy (127.0.0.1:P)  --HTTP-->  moto ThreadedMotoServer
                                  | per request, with probability `rate`, one fault:
                                  |   slowdown    503 SlowDown (S3's throttling answer)
                                  |   internal    500 InternalError
                                  |   reset       TCP RST before the request is forwarded
                                  |   lost_reply  forwarded (it takes effect!), then TCP RST
                                  |               instead of the answer
                                  |   truncated   forwarded; the answer's headers and half its
                                  |               body, then TCP RST
                                  |   slow        forwarded after a delay (below read timeouts)
                                  | down(): the port refuses connections, open ones are reset

Every request the client sends goes through here, so faults hit metadata reads, commits
(conditional PUTs), Parquet range reads, data writes and deletes alike, from the driver and from
worker processes. ``counts`` tallies what was injected, by kind. Faults are drawn from a seeded
generator, but which request gets one depends on thread timing, as with a real network.
"""

from __future__ import annotations

import http.client
import random
import socket
import socketserver
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

KINDS = ("slowdown", "internal", "reset", "lost_reply", "truncated", "slow")
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
               "trailer", "transfer-encoding", "upgrade", "expect"}
_ERRORS = {
    "slowdown": (503, "SlowDown", "Please reduce your request rate."),
    "internal": (500, "InternalError", "We encountered an internal error. Please try again."),
}


def _reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), as a crashed or overloaded peer does."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], proxy: FaultProxy) -> None:
        self.proxy = proxy
        super().__init__(address, _Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a reset connection is what this server is for, not news


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as botocore's connection pools expect
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.server.proxy._opened(self.connection)
        self._upstream: http.client.HTTPConnection | None = None

    def finish(self) -> None:
        self.server.proxy._closed(self.connection)
        if self._upstream is not None:
            self._upstream.close()
        try:
            super().finish()
        except OSError:
            pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        proxy = self.server.proxy
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        if body or self.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        for attempt in range(2):  # a pooled upstream connection may have gone stale
            if self._upstream is None:
                self._upstream = http.client.HTTPConnection(proxy.upstream_host,
                                                            proxy.upstream_port, timeout=60)
            try:
                self._upstream.request(self.command, self.path, body=body, headers=headers)
                response = self._upstream.getresponse()
                data = response.read()
                return response.status, response.getheaders(), data
            except (ConnectionError, http.client.HTTPException):
                self._upstream.close()
                self._upstream = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _handle(self) -> None:
        proxy = self.server.proxy
        body = self._body()
        fault = proxy._draw(self.command, self.path)
        if fault == "reset" or proxy.is_down:
            self.close_connection = True
            _reset(self.connection)
            return
        if fault in _ERRORS:
            status, code, message = _ERRORS[fault]
            xml = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                   f"<Message>{message}</Message><RequestId>fault-proxy</RequestId></Error>"
                   ).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(xml) if self.command != "HEAD" else 0))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(xml)
            return
        if fault == "slow":
            time.sleep(proxy.rng_uniform(*proxy.slow_seconds))
        status, headers, data = self._forward(body)
        proxy._forwarded()
        if fault == "lost_reply" or proxy.is_down:
            self.close_connection = True
            _reset(self.connection)
            return
        if fault == "truncated" and (self.command == "HEAD" or len(data) < 2):
            fault = None  # nothing to cut short: answer in full
            with proxy._lock:
                proxy.counts["truncated"] -= 1
        self.send_response_only(status)
        for name, value in headers:
            if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                self.send_header(name, value)
        length = dict((k.lower(), v) for k, v in headers).get("content-length")
        self.send_header("Content-Length",
                         length if self.command == "HEAD" and length else str(len(data)))
        self.end_headers()
        if fault == "truncated":
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            _reset(self.connection)
        elif self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle


class FaultProxy:
    """The proxy: ``url`` is the endpoint to give clients; ``rate``, ``kinds`` and ``methods``
    (the HTTP methods that may draw a fault) say what to inject; ``down()``/``up()`` take the
    endpoint away and bring it back on the same port."""

    def __init__(self, upstream: str, *, rate: float = 0.0, kinds: tuple[str, ...] = KINDS,
                 methods: tuple[str, ...] = ("GET", "HEAD", "PUT", "POST", "DELETE"),
                 seed: int = 0, slow_seconds: tuple[float, float] = (0.05, 0.5)) -> None:
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; valid: {KINDS}")
        self.upstream_url = upstream
        parts = urlsplit(upstream)
        self.upstream_host, self.upstream_port = parts.hostname or "127.0.0.1", parts.port or 80
        self.rate, self.kinds, self.slow_seconds = rate, tuple(kinds), slow_seconds
        self.methods = frozenset(methods)
        self.counts: Counter[str] = Counter()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._budget: int | None = None  # requests to let through before going down
        # a test's own choice of fault for a request (method, path), before any random one
        self.script: Callable[[str, str], str | None] | None = None
        self.is_down = False
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FaultProxy:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    # -- fault decisions (under the lock: handler threads share the generator) -----------------
    def _draw(self, method: str, path: str = "") -> str | None:
        with self._lock:
            self.counts["requests"] += 1
            scripted = self.script(method, path) if self.script is not None else None
            if scripted is not None:
                self.counts[scripted] += 1
                return scripted
            if self._budget is not None:
                if self._budget == 0:
                    self._budget = None
                    self.is_down = True
                    threading.Thread(target=self.down, daemon=True).start()
                else:
                    self._budget -= 1
            if self.is_down or method not in self.methods or self._rng.random() >= self.rate:
                return None
            kind = self._rng.choice(self.kinds)
            self.counts[kind] += 1
            return kind

    def rng_uniform(self, low: float, high: float) -> float:
        with self._lock:
            return self._rng.uniform(low, high)

    def _forwarded(self) -> None:
        with self._lock:
            self.counts["forwarded"] += 1

    def down_after(self, requests: int) -> None:
        """Let ``requests`` more requests through, then go down."""
        with self._lock:
            self._budget = requests

    @property
    def injected(self) -> dict[str, int]:
        return {k: self.counts[k] for k in KINDS if self.counts[k]}

    # -- connections -------------------------------------------------------------------------
    def _opened(self, sock: socket.socket) -> None:
        with self._lock:
            self._connections.add(sock)

    def _closed(self, sock: socket.socket) -> None:
        with self._lock:
            self._connections.discard(sock)

    def up(self) -> None:
        """Listen (again, on the same port once it has one)."""
        if self._server is not None:
            return
        self._server = _Server(("127.0.0.1", self.port), self)
        self.port = self._server.server_address[1]
        self.is_down = False
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def down(self) -> None:
        """Stop listening (connections are refused) and reset every open connection."""
        self.is_down = True
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        with self._lock:
            connections = list(self._connections)
        for sock in connections:
            _reset(sock)
