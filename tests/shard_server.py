"""A loopback HTTP server for shard sets: throttled, fault-injecting, with a request log.

It serves the files under `root` on 127.0.0.1 (a free port) from a thread of the test process, so a test
can change its behaviour between requests while an `mpl` subprocess reads from it:

- `rate`: bytes per second per response (0: unthrottled), sent in small slices;
- `faults[path]`: a list of faults used up one per request of that path: "404", "503", "reset" (half the
  body, then a TCP reset), "wrong" (one byte flipped), "short" (the first half, announced as the whole);
- `down`: every request of a `.tar` gets 503 while it is true; `down_after`: it becomes true after that
  many `.tar` requests were answered;
- `log`: (monotonic time, path, status, bytes announced) of every request, when its answer starts.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class ShardServer:
    def __init__(self, root: Path, rate: float = 0):
        self.root, self.rate = Path(root), rate
        self.faults: dict[str, list[str]] = {}
        self.down = False
        self.down_after: int | None = None
        self.log: list[tuple[float, str, int, int]] = []
        self._lock = threading.Lock()
        self._tars_served = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), name="shard-server", daemon=True)

    def __enter__(self) -> ShardServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def requests(self, suffix: str = ".tar") -> list[str]:
        """Paths requested so far that end with `suffix`, in order."""
        with self._lock:
            return [path for _, path, _, _ in self.log if path.endswith(suffix)]

    def clear(self) -> None:
        with self._lock:
            self.log.clear()
            self._tars_served = 0

    def _next_fault(self, path: str) -> str | None:
        with self._lock:
            if path.endswith(".tar"):
                if self.down_after is not None and self._tars_served >= self.down_after:
                    self.down = True
                if self.down:
                    return "503"
                self._tars_served += 1
            queue = self.faults.get(path)
            return queue.pop(0) if queue else None

    def _record(self, path: str, status: int, sent: int) -> None:
        with self._lock:
            self.log.append((time.monotonic(), path, status, sent))


def _handler(server: ShardServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # the request log is `server.log`
            pass

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            fault = server._next_fault(path)
            file = server.root / path.lstrip("/")
            if fault in ("404", "503") or not file.is_file():
                status = 503 if fault == "503" else 404
                body = b"unavailable" if status == 503 else b"not found"
                server._record(path, status, 0)
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            data = file.read_bytes()
            length = len(data)
            if fault == "wrong":
                data = bytearray(data)
                data[len(data) // 2] ^= 0x01
                data = bytes(data)
            elif fault in ("reset", "short"):
                data = data[: len(data) // 2]
                length = len(data) if fault == "short" else length
            server._record(path, 200, length)  # before sending: the client may act on the bytes before this thread goes on
            self.send_response(200)
            self.send_header("Content-Length", str(length))
            self.end_headers()
            self._send(data)
            if fault == "reset":
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True

        def _send(self, data: bytes) -> int:
            step = 16 << 10 if server.rate else len(data) or 1
            sent = 0
            for start in range(0, len(data), step):
                piece = data[start : start + step]
                try:
                    self.wfile.write(piece)
                except (BrokenPipeError, ConnectionResetError):
                    return sent
                sent += len(piece)
                if server.rate:
                    time.sleep(len(piece) / server.rate)
            return sent

    return Handler
