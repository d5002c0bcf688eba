"""A real HTTP server on loopback that records every request and answers what a test tells it to.

For tests about what crosses the wire (headers forwarded on a redirect, a vendor body echoing a
value): the stand-ins enforce vendor contracts, this one only records and answers.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Answer:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Recorder:
    """``answer`` turns each request into a response; ``seen`` lists the requests in arrival order."""

    answer: Callable[[Seen], Answer]
    seen: list[Seen] = field(default_factory=list)
    url: str = ""


@contextmanager
def recording(answer: Callable[[Seen], Answer], host: str = "127.0.0.1") -> Iterator[Recorder]:
    recorder = Recorder(answer)

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            seen = Seen(self.command, self.path, dict(self.headers.items()), self.rfile.read(length))
            recorder.seen.append(seen)
            reply = recorder.answer(seen)
            body = b"" if reply.body is None else json.dumps(reply.body).encode()
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_DELETE = do_PUT = _handle

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            pass

    server = ThreadingHTTPServer((host, 0), Handler)
    recorder.url = f"http://{host}:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield recorder
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
