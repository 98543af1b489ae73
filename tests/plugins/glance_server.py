"""A loopback server speaking the parts of Glance's v2 image API the glance plug-in uses.

GET /v2/images/<id> (metadata), GET /v2/images/<id>/file (data), PUT
/v2/images/<id>/file (upload; Content-Length or chunked). Requires the
X-Auth-Token it was given; can drop connections, answer 5xx, or truncate
bodies on demand to exercise the plug-in's retries; optionally TLS.
"""

from __future__ import annotations

import hashlib
import json
import re
import ssl
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class GlanceServer:
    def __init__(self, token: str = "tok-123", tls: ssl.SSLContext | None = None) -> None:
        self.token = token
        self.images: dict[str, dict] = {}
        self.data: dict[str, bytes] = {}
        self.drop_next = 0  # close the connection without answering
        self.status_next: list[int] = []  # answer these statuses first
        self.truncate_next = 0  # send only half of the next downloads
        self.requests: list[tuple[str, str, dict]] = []
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self.scheme = "https" if tls else "http"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self._server.server_address[1]}"

    def add_image(self, data: bytes, disk_format: str, container_format: str) -> str:
        image_id = str(uuid.uuid4())
        self.images[image_id] = {
            "id": image_id,
            "status": "active",
            "disk_format": disk_format,
            "container_format": container_format,
            "size": len(data),
            "checksum": hashlib.md5(data).hexdigest(),  # noqa: S324 - Glance's own checksum
        }
        self.data[image_id] = data
        return image_id

    def queued_image(self, disk_format: str = "vhd", container_format: str = "ovf") -> str:
        image_id = str(uuid.uuid4())
        self.images[image_id] = {
            "id": image_id,
            "status": "queued",
            "disk_format": disk_format,
            "container_format": container_format,
            "size": None,
            "checksum": None,
        }
        return image_id

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _fault(self) -> tuple[str, int] | None:
        with self.lock:
            if self.drop_next:
                self.drop_next -= 1
                return ("drop", 0)
            if self.status_next:
                return ("status", self.status_next.pop(0))
        return None

    def _handler(self):
        glance = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _reply(self, status: int, body: bytes = b"", content_type: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _route(self, method: str):
                glance.requests.append((method, self.path, dict(self.headers)))
                fault = glance._fault()
                if fault and fault[0] == "drop":
                    self.close_connection = True
                    self.connection.close()
                    return None
                if fault:
                    self._reply(fault[1], b'{"error": "injected"}')
                    return None
                if self.headers.get("X-Auth-Token") != glance.token:
                    self._reply(401, b'{"error": "authentication required"}')
                    return None
                match = re.match(r"^/v2/images/([0-9a-f-]+)(/file)?$", self.path)
                if not match or match.group(1) not in glance.images:
                    self._reply(404, b'{"error": "no such image"}')
                    return None
                return match.group(1), bool(match.group(2))

            def do_GET(self):  # noqa: N802
                route = self._route("GET")
                if route is None:
                    return
                image_id, is_file = route
                if not is_file:
                    self._reply(200, json.dumps(glance.images[image_id]).encode())
                    return
                data = glance.data.get(image_id)
                if data is None:
                    self._reply(204)
                    return
                with glance.lock:
                    truncate = glance.truncate_next > 0
                    glance.truncate_next -= truncate
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2] if truncate else data)
                if truncate:
                    self.close_connection = True

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return bytes(out)
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))

            def do_PUT(self):  # noqa: N802
                route = self._route("PUT")
                if route is None:
                    return
                image_id, is_file = route
                body = self._body()
                image = glance.images[image_id]
                if not is_file:
                    self._reply(405)
                    return
                if image["status"] != "queued":
                    self._reply(409, b'{"error": "image is not queued"}')
                    return
                glance.data[image_id] = body
                image.update(status="active", size=len(body), checksum=hashlib.md5(body).hexdigest())  # noqa: S324
                self._reply(204)

        return Handler
