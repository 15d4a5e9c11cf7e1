"""A fake OpenAI Files API on 127.0.0.1 speaking the real wire format: multipart upload, list, retrieve, content,
delete; bearer auth; OpenAI's error bodies. Switches (`api.fault`) for the failures a prober meets:

* "500", "503": server errors (`server_error`, `server_is_overloaded`);
* "timeout": the request is read and never answered (the connection is held for `hang` seconds);
* "401": the key is refused (`invalid_api_key`, the message quoting part of the key, as OpenAI's does);
* "429_quota": `insufficient_quota` (our account);
* "429_shed": load shedding, `{"status": "come back later"}` (seen during the 2023-11-08 outage).

`api.upload_delay` stores an upload and answers it only that many seconds later (a probe in flight).
Every request is kept in `api.requests`; `api.max_probe_files` is the most probe files that ever existed at once.
"""
from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass
from email import policy
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

PREFIX = "openai-status-monitor-probe-"


@dataclass
class Seen:
    method: str
    path: str           # with the query
    headers: dict[str, str]
    body: bytes


def error(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


FAULTS = {
    "500": (500, error("The server had an error while processing your request. Sorry about that!", "server_error")),
    "503": (503, error("The server is overloaded or not ready yet.", "server_error", "server_is_overloaded")),
    "429_quota": (429, error("You exceeded your current quota, please check your plan and billing details.",
                             "insufficient_quota", "insufficient_quota")),
    "429_shed": (429, {"status": "come back later"}),
}


class FakeOpenAI:
    def __init__(self, key: str, *, hang: float = 3.0):
        self.key, self.hang = key, hang
        self.fault: str | None = None
        self.upload_delay = 0.0
        self.content_refused = False
        self.files: dict[str, dict] = {}
        self.contents: dict[str, bytes] = {}
        self.requests: list[Seen] = []
        self.max_probe_files = 0
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.stop = threading.Event()
        handler = type("Handler", (_Handler,), {"api": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def add_file(self, filename: str, content: bytes = b"x", purpose: str = "user_data") -> str:
        with self.lock:
            return self._store(filename, content, purpose)

    def _store(self, filename: str, content: bytes, purpose: str) -> str:
        fid = "file-" + secrets.token_hex(12)
        self.files[fid] = {"id": fid, "object": "file", "bytes": len(content), "created_at": int(time.time()),
                           "filename": filename, "purpose": purpose}
        self.contents[fid] = content
        self.max_probe_files = max(self.max_probe_files, len(self.probe_files()))
        self.changed.notify_all()
        return fid

    def probe_files(self) -> list[str]:
        return [f["filename"] for f in self.files.values() if f["filename"].startswith(PREFIX)]

    def seen(self, method: str, path_start: str) -> list[Seen]:
        with self.lock:
            return [r for r in self.requests if r.method == method and r.path.startswith(path_start)]

    def wait(self, pred, timeout: float = 15.0, what: str = "condition"):
        """Wait until pred() (called under the lock) is true."""
        end = time.monotonic() + timeout
        with self.changed:
            while not pred():
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"fake OpenAI: no {what} within {timeout} s; "
                                         f"{[(r.method, r.path) for r in self.requests[-10:]]}")
                self.changed.wait(min(left, 0.1))

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


class _Handler(BaseHTTPRequestHandler):
    api: FakeOpenAI
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_DELETE(self):
        self._handle("DELETE")

    def _send(self, status: int, obj=None, raw: bytes | None = None, ctype: str = "application/json") -> None:
        body = raw if raw is not None else json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self, method: str) -> None:
        api = self.api
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with api.changed:
            api.requests.append(Seen(method, self.path, dict(self.headers.items()), body))
            api.changed.notify_all()
            fault = api.fault
        if fault == "timeout":
            api.stop.wait(api.hang)
            self.close_connection = True
            return
        if fault in FAULTS:
            return self._send(*FAULTS[fault])
        auth = self.headers.get("Authorization", "")
        if fault == "401" or auth != f"Bearer {api.key}":
            shown = auth.removeprefix("Bearer ")
            return self._send(401, error(f"Incorrect API key provided: {shown[:6]}***{shown[-4:]}. You can find "
                                         "your API key at https://platform.openai.com/account/api-keys.",
                                         "invalid_request_error", "invalid_api_key"))
        url = urlsplit(self.path)
        parts = url.path.rstrip("/").split("/")
        if parts[:3] != ["", "v1", "files"]:
            return self._send(404, error(f"Invalid URL ({method} {url.path})", "invalid_request_error"))
        fid = parts[3] if len(parts) > 3 else None
        if method == "POST" and fid is None:
            return self._upload(body)
        if method == "GET" and fid is None:
            purpose = parse_qs(url.query).get("purpose", [None])[0]
            with api.lock:
                data = [f for f in api.files.values() if purpose in (None, f["purpose"])]
            return self._send(200, {"object": "list", "data": data, "has_more": False})
        with api.lock:
            f = api.files.get(fid)
        if f is None:
            return self._send(404, error(f"No such File object: {fid}", "invalid_request_error", param="id"))
        if method == "GET" and len(parts) == 4:
            return self._send(200, f)
        if method == "GET" and parts[4:] == ["content"]:
            if api.content_refused:
                return self._send(400, error(f"Not allowed to download files of purpose: {f['purpose']}",
                                             "invalid_request_error"))
            return self._send(200, raw=api.contents[fid], ctype="application/octet-stream")
        if method == "DELETE" and len(parts) == 4:
            with api.changed:
                api.files.pop(fid, None)
                api.changed.notify_all()
            return self._send(200, {"id": fid, "object": "file", "deleted": True})
        return self._send(404, error(f"Invalid URL ({method} {url.path})", "invalid_request_error"))

    def _upload(self, body: bytes) -> None:
        ctype = self.headers.get("Content-Type", "")
        if not ctype.startswith("multipart/form-data"):
            return self._send(400, error("Expected multipart/form-data", "invalid_request_error"))
        msg = BytesParser(policy=policy.default).parsebytes(b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + body)
        fields, upload = {}, None
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if part.get_filename():
                upload = (part.get_filename(), part.get_payload(decode=True))
            elif name:
                fields[name] = part.get_content().strip()
        if fields.get("purpose") not in ("assistants", "batch", "fine-tune", "vision", "user_data", "evals"):
            return self._send(400, error("Invalid value for 'purpose'.", "invalid_request_error", param="purpose"))
        if upload is None:
            return self._send(400, error("Missing file.", "invalid_request_error", param="file"))
        with self.api.lock:
            fid = self.api._store(upload[0], upload[1], fields["purpose"])
            f = dict(self.api.files[fid])
        if self.api.upload_delay:
            self.api.stop.wait(self.api.upload_delay)
        self._send(200, f)
