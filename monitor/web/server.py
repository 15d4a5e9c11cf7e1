"""The service's read-only HTTP listener, on its own asyncio event loop.

HTTP/1.1 is parsed by h11 (a small, strict, well-kept parser the HTTP client already depends on), so this
module only routes: GET and HEAD of `/`, `/metrics`, `/status.json` and `/healthz`; any other method is 405,
any other path 404. Every answer reads the store in a worker thread (asyncio.to_thread), so a slow disk
never holds up a poll. Nothing is ever written through HTTP. Limits: request heads of about 16 KiB (431 beyond), no
request body is read, 10 s to send a request, at most MAX_CONNECTIONS at once."""
from __future__ import annotations

import asyncio
import json
import logging
import os

import h11
from prometheus_client.exposition import choose_encoder

from monitor import status
from monitor.config import ConfigError
from monitor.db import make_engine, safe_error
from monitor.web.metrics import PollCounts, registry

log = logging.getLogger("monitor.web")

MAX_CONNECTIONS = 32
MAX_HEAD = 16384      # bytes of a request head (read 4 KiB at a time: longer heads are refused with 431)
READ_TIMEOUT = 10.0
ROUTES = ("/", "/metrics", "/status.json", "/healthz")
# the page has no script, no image and nothing from elsewhere: say so, so a browser enforces it
SECURITY_HEADERS = [
    ("content-security-policy", "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; "
                                "form-action 'none'; frame-ancestors 'none'"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
]


class WebServer:
    def __init__(self, settings):
        self.settings = settings
        self.engine = make_engine(settings.database_url(), readonly=True)   # readers never take the writers' lock
        self.counts = PollCounts()          # the service counts each poll here
        self.registry = registry(settings, self.engine, self.counts)
        self.server: asyncio.Server | None = None
        self.connections: set[asyncio.Task] = set()

    async def start(self) -> None:
        """Listen on [http] listen; a failure is a one-line ConfigError naming the key."""
        host, port = self.settings.http.address
        try:
            self.server = await asyncio.start_server(self._connection, host, port, reuse_address=True)
        except OSError as exc:
            why = os.strerror(exc.errno) if exc.errno else str(exc)   # asyncio's own wording repeats the address
            raise ConfigError(f"{self.settings.source}: http.listen: cannot listen on {host}:{port}: {why}") from None
        log.info("serving the page, /metrics, /status.json and /healthz on http://%s",
                 ", http://".join(_addr(s.getsockname()) for s in self.server.sockets))

    async def stop(self) -> None:
        if self.server is None:
            self.engine.dispose()
            return
        self.server.close()
        for t in list(self.connections):
            t.cancel()
        if self.connections:
            await asyncio.wait(list(self.connections), timeout=2)
        await self.server.wait_closed()
        self.engine.dispose()

    # -- one connection ------------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if len(self.connections) >= MAX_CONNECTIONS:
            writer.close()
            return
        self.connections.add(task)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        try:
            while True:
                event = await self._next_event(conn, reader)
                if event is None or isinstance(event, h11.ConnectionClosed):
                    break
                head_only = False
                if isinstance(event, h11.RemoteProtocolError):
                    status, headers, body = event.error_status_hint, [("content-type", "text/plain; charset=utf-8")], \
                        b"bad request\n"
                else:
                    req = event
                    head_only = req.method == b"HEAD"
                    if req.method in (b"GET", b"HEAD"):   # read to the end of the request (a body is ignored)
                        while not isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed, h11.RemoteProtocolError)) \
                                and event is not None:
                            event = await self._next_event(conn, reader)
                        if not isinstance(event, h11.EndOfMessage):
                            break
                    status, headers, body = await self._answer(req)
                if conn.their_state is not h11.DONE:          # a body we did not read, or a broken request
                    headers = headers + [("connection", "close")]
                headers = headers + [("content-length", str(len(body)))]
                try:
                    writer.write(conn.send(h11.Response(status_code=status, headers=headers)))
                    if body and not head_only:
                        writer.write(conn.send(h11.Data(data=body)))
                    writer.write(conn.send(h11.EndOfMessage()))
                except h11.LocalProtocolError:
                    break
                await writer.drain()
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    break
                conn.start_next_cycle()
            if conn.their_state in (h11.SEND_BODY, h11.ERROR) and not reader.at_eof():
                await self._linger(reader, writer)
        except (ConnectionError, asyncio.CancelledError, TimeoutError):
            pass
        finally:
            self.connections.discard(task)
            writer.close()

    @staticmethod
    async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Closing with unread request bytes makes the kernel reset the connection, which can destroy the
        answer before the client reads it: say we are done, and drain what the client still sends (1 s)."""
        writer.write_eof()
        loop = asyncio.get_running_loop()
        end = loop.time() + 1.0
        while loop.time() < end and await asyncio.wait_for(reader.read(65536), max(0.0, end - loop.time())):
            pass

    async def _next_event(self, conn: h11.Connection, reader: asyncio.StreamReader):
        """The next request, ConnectionClosed, or a RemoteProtocolError (answered 400); None on timeout."""
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                return exc
            if event is not h11.NEED_DATA:
                return event
            try:
                data = await asyncio.wait_for(reader.read(4096), READ_TIMEOUT)
            except TimeoutError:
                return None
            conn.receive_data(data)

    async def _answer(self, req: h11.Request) -> tuple[int, list, bytes]:
        path = req.target.split(b"?", 1)[0].decode("ascii", "replace")
        text = "text/plain; charset=utf-8"
        if req.method not in (b"GET", b"HEAD"):
            return 405, [("content-type", text), ("allow", "GET, HEAD")], b"read-only: only GET and HEAD\n"
        if path not in ROUTES:
            return 404, [("content-type", text)], b"not found\n"
        try:
            accept = b", ".join(v for k, v in req.headers if k == b"accept").decode("latin-1")
            return await asyncio.to_thread(self._render, path, accept)
        except Exception as exc:   # the store could not be read: say so, keep serving
            log.warning("cannot answer %s: %s: %s", path, type(exc).__name__, safe_error(exc))
            return 500, [("content-type", text)], f"cannot read the store: {safe_error(exc)}\n".encode()

    def _render(self, path: str, accept: str = "") -> tuple[int, list, bytes]:
        """Blocking: runs in a worker thread."""
        if path == "/metrics":   # the text format, or OpenMetrics when the scraper asks for it

            encode, content_type = choose_encoder(accept)
            return 200, [("content-type", content_type), ("cache-control", "no-store")], encode(self.registry)
        if path == "/":
            from monitor.web.page import render_from_store   # Jinja2 only once someone opens the page

            html = render_from_store(self.settings, self.engine)
            return 200, [("content-type", "text/html; charset=utf-8"), *SECURITY_HEADERS], html.encode()
        report = status.read(self.settings, self.engine)
        if path == "/status.json":
            body = json.dumps(status.to_json(report), ensure_ascii=False).encode() + b"\n"
            return 200, [("content-type", "application/json"), ("cache-control", "no-store")], body
        stale = [p.name for p in report.health if not p.fresh(report.now)]
        body = ("stale: " + ", ".join(stale) if stale else "ok: every page's data is fresh") + "\n"
        return (503 if stale else 200), [("content-type", "text/plain; charset=utf-8"),
                                         ("cache-control", "no-store")], body.encode()


def _addr(sockname) -> str:
    host, port = sockname[0], sockname[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
