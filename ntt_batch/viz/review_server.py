"""``ntt-batch review --serve``: serve a review folder on 127.0.0.1 and save the page's decisions.

The standard library's HTTP server, bound to the loopback interface only (the page is reachable
from this machine, not from the network): ``GET`` serves the folder's files; ``POST /decisions``
takes the page's decisions document (``docs/review_decisions.md``), checks it
(:func:`.review_decisions.validate_decisions`) and writes it atomically to
``<folder>/decisions.json``. A POST whose ``Origin`` is another site is refused (403), so a web
page elsewhere cannot write there; a cross-origin ``fetch`` with a JSON body is stopped by the
browser's preflight in any case (no ``OPTIONS`` handler).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

from ..storage.atomic import atomic_write_text
from .review_decisions import validate_decisions

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
MAX_BODY = 256 << 20  # bytes: about 500,000 decisions
DECISIONS_FILE = "decisions.json"
_write_lock = threading.Lock()


class ReviewHandler(SimpleHTTPRequestHandler):
    """Files of the review folder, and ``POST /decisions``."""

    def _reply(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.split("?", 1)[0] != "/decisions":
            self._reply(404, {"error": f"no {self.path}: POST the decisions to /decisions"})
            return
        origin = self.headers.get("Origin")
        port = self.server.server_address[1]
        if origin and origin not in (f"http://{HOST}:{port}", f"http://localhost:{port}"):
            self._reply(403, {"error": f"decisions from {origin} are refused: open the page from this server"})
            return
        try:
            length = int(self.headers.get("Content-Length") or "")
        except ValueError:
            self._reply(411, {"error": "a Content-Length header is needed"})
            return
        if length > MAX_BODY:
            self._reply(413, {"error": f"{length} bytes is over the {MAX_BODY}-byte limit"})
            return
        try:
            doc = validate_decisions(json.loads(self.rfile.read(length)))
        except ValueError as e:  # json.JSONDecodeError is a ValueError
            self._reply(400, {"error": str(e)})
            return
        path = os.path.join(self.directory, DECISIONS_FILE)
        with _write_lock:
            atomic_write_text(path, json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
        self._reply(200, {"path": DECISIONS_FILE, "decisions": len(doc["decisions"])})

    def end_headers(self) -> None:
        if self.command == "GET":
            self.send_header("Cache-Control", "no-cache")  # a rebuilt page's data, not a cached one
        super().end_headers()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's signature
        log.debug("review server: " + format, *args)


def make_server(folder: str, port: int = 8000) -> ThreadingHTTPServer:
    """The server of ``folder`` on 127.0.0.1:``port`` (0: any free port), not started yet."""
    if not os.path.isfile(os.path.join(folder, "index.html")):
        raise FileNotFoundError(f"{folder} has no index.html: write the page first (ntt-batch review --shards ...)")
    try:
        return ThreadingHTTPServer((HOST, port), partial(ReviewHandler, directory=os.path.abspath(folder)))
    except OSError as e:
        raise OSError(f"cannot listen on {HOST}:{port} ({e.strerror or e}): pass another --port") from e


def serve(folder: str, port: int = 8000, echo=print) -> None:
    """Serve ``folder`` until interrupted (Ctrl-C)."""
    server = make_server(folder, port)
    host, port = server.server_address[:2]
    echo(f"serving {folder} at http://{host}:{port}/index.html (decisions are saved to {DECISIONS_FILE}); Ctrl-C stops")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
