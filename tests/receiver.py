"""A real HTTP server that receives webhooks, in a thread, answering as a test scripts it."""

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from status_tracker.ports import free_port


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    status: int


@dataclass
class Receiver:
    """Answers each POST with `answer()`: (status, seconds to wait first). Default: 200 at once."""

    port: int = field(default_factory=free_port)
    answer: Callable[[], tuple[int, float]] = lambda: (200, 0.0)
    received: list[Received] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def start(self) -> "Receiver":
        receiver = self

        # HTTP/1.0: a connection per request, so that stop() leaves nothing answering.
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status, wait = receiver.answer()
                receiver.received.append(Received(dict(self.headers.items()), body, status))
                time.sleep(wait)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass  # the client gave up waiting

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def answers(*scripted: tuple[int, float]) -> Callable[[], tuple[int, float]]:
    """The scripted answers in turn, then 200 at once for ever."""
    pending = list(scripted)
    lock = threading.Lock()

    def answer() -> tuple[int, float]:
        with lock:
            return pending.pop(0) if pending else (200, 0.0)

    return answer
