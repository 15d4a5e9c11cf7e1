"""Real local servers for the notification tests (127.0.0.1 only): an SMTP server (aiosmtpd) collecting
messages and an HTTP server collecting json:// POSTs that can fail for an outage and then recover."""
from __future__ import annotations

import email
import json
import socket
import threading
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aiosmtpd.controller import Controller


def free_port() -> int:
    """A port nothing listens on (connections to it are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------- SMTP

@dataclass
class Mail:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage

    def part(self, content_type: str) -> str | None:
        for p in self.message.walk():
            if p.get_content_type() == content_type and not p.is_multipart():
                return p.get_content().replace("\r\n", "\n")
        return None


class _Collector:
    def __init__(self):
        self.mails: list[Mail] = []
        self.lock = threading.Lock()
        self.received = threading.Condition(self.lock)

    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.content, policy=policy.default)
        with self.received:
            self.mails.append(Mail(envelope.mail_from, list(envelope.rcpt_tos), msg))
            self.received.notify_all()
        return "250 Message accepted for delivery"


class _Controller(Controller):
    def _trigger_server(self):
        # bound to port 0: learn the real port before aiosmtpd connects to itself
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


class SMTPServer:
    """`with SMTPServer() as smtp:` a plain (no TLS, no AUTH) SMTP server; `smtp.mails` holds what came."""

    def __init__(self):
        self.handler = _Collector()
        self.controller = _Controller(self.handler, hostname="127.0.0.1", port=0)

    @property
    def port(self) -> int:
        return self.controller.port

    @property
    def mails(self) -> list[Mail]:
        with self.handler.lock:
            return list(self.handler.mails)

    def url(self, **params: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in {"from": "alerts@example.org", "to": "ops@example.org",
                                                  **params}.items())
        return f"mailto://127.0.0.1:{self.port}?{query}"

    def __enter__(self) -> SMTPServer:
        self.controller.start()
        return self

    def __exit__(self, *exc) -> None:
        self.controller.stop()


# ------------------------------------------------------------------------------------------------- HTTP

@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


@dataclass
class _State:
    mode: str = "ok"                 # ok | error (HTTP 500) | drop (close the connection unanswered)
    requests: list[Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    state: _State
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.state.lock:
            self.state.requests.append(Request("POST", self.path, dict(self.headers.items()), body))
            mode = self.state.mode
        if mode == "drop":
            self.close_connection = True
            return
        code, text = (500, b"outage") if mode == "error" else (200, b"ok")
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)

    def log_message(self, *args):  # keep test output clean
        pass


class HTTPServer:
    """`with HTTPServer() as web:` collects POSTs in `web.requests`; set `web.mode` to "error" (500) or "drop"
    for an outage and back to "ok" to recover."""

    def __init__(self):
        self.state = _State()
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def mode(self) -> str:
        return self.state.mode

    @mode.setter
    def mode(self, value: str) -> None:
        assert value in ("ok", "error", "drop")
        with self.state.lock:
            self.state.mode = value

    @property
    def requests(self) -> list[Request]:
        with self.state.lock:
            return list(self.state.requests)

    def url(self, path: str = "/hook") -> str:
        return f"json://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> HTTPServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
