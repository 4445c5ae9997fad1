"""A real HTTP server on 127.0.0.1 for the built-in worker tests (stdlib, in a thread)."""

from __future__ import annotations

import email.parser
import email.policy
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DATA = bytes(range(256)) * 1200  # 307,200 bytes


class State:
    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.ranges: list[str | None] = []
        self.uploads: list[dict[str, Any]] = []
        self.data = DATA  # what /file and /file-interrupt serve (a test may change it)
        self.etag = '"v1"'  # its validator (If-Range is honoured: another one gets it whole)
        self.if_ranges: list[str | None] = []
        self.encodings: list[str | None] = []  # each /file request's Accept-Encoding


class Handler(BaseHTTPRequestHandler):
    state: State

    def log_message(self, *args: Any) -> None:
        pass

    def _reply(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?")[0]
        self.state.hits[path] += 1
        if path == "/ok":
            self._reply(200, b"hello")
        elif path == "/404":
            self._reply(404, b"nope")
        elif path == "/flaky":
            self._reply(500 if self.state.hits[path] == 1 else 200, b"x")
        elif path == "/slow":
            time.sleep(3)
            self._reply(200, b"late")
        elif path == "/redirect":  # 302 to ?to=<url>
            self._reply(302, headers={"Location": self.path.split("to=", 1)[1]})
        elif path == "/drip":  # ?n=<bytes>: one byte every 0.2 s
            n = int(self.path.split("n=", 1)[1])
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            try:
                for _ in range(n):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:  # the client gave up
                pass
        elif path == "/big":  # ?n=<bytes>, sent in 64 KiB writes
            n = int(self.path.split("n=", 1)[1])
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            block = b"x" * 65536
            while n > 0:
                self.wfile.write(block[:n])
                n -= len(block)
        elif path in ("/file", "/file-interrupt"):
            self._file(interrupt=path == "/file-interrupt" and self.state.hits[path] == 1)
        else:
            self._reply(404)

    def _file(self, interrupt: bool) -> None:
        data = self.state.data
        rng = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        self.state.ranges.append(rng)
        self.state.if_ranges.append(if_range)
        self.state.encodings.append(self.headers.get("Accept-Encoding"))
        if "gzip" in (self.headers.get("Accept-Encoding") or ""):  # compressed on the fly, as nginx
            import gzip

            body = gzip.compress(self.state.data)
            self._reply(200, body, {"Content-Encoding": "gzip", "ETag": self.state.etag})
            return
        if if_range is not None and if_range != self.state.etag:
            rng = None  # RFC 9110: a validator that does not match gets the whole representation
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        if rng and start >= len(data):
            self._reply(416, headers={"Content-Range": f"bytes */{len(data)}"})
            return
        body = data[start:]
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("ETag", self.state.etag)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if interrupt:  # half the body, then the connection drops
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length", 0))
        raw = self.rfile.read(length)
        if self.path.startswith("/redirect"):
            self.state.hits["/redirect"] += 1
            self._reply(307, headers={"Location": self.path.split("to=", 1)[1]})  # 307: POST again there
        elif self.path == "/upload":
            msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + raw
            )
            parts = {p.get_param("name", header="content-disposition"): p for p in msg.iter_parts()}
            received = {
                name: {"filename": p.get_filename(), "content": p.get_payload(decode=True), "type": p.get_content_type()}
                for name, p in parts.items()
            }
            self.state.uploads.append(received)
            self._reply(200, json.dumps({"ok": True}).encode())
        else:
            self._reply(200, raw)


class Server:
    def __init__(self) -> None:
        self.state = State()
        handler = type("H", (Handler,), {"state": self.state})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)
