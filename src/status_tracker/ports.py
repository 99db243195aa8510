"""Local TCP ports: finding a free one, and waiting for a server to listen on one."""

import socket
import time
from collections.abc import Callable


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def is_listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def wait_for_port(port: int, alive: Callable[[], bool], timeout: float = 30) -> None:
    """Return once something listens on `port`; raise if `alive()` turns false or time runs out."""
    deadline = time.monotonic() + timeout
    while not is_listening(port):
        if not alive():
            raise RuntimeError(f"the server meant for port {port} exited")
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on port {port} after {timeout} s")
        time.sleep(0.05)
