"""A loopback Glance v2 API for image tests: enough for Nova's glanceclient and the dom0 plug-in.

Serves ``GET /v2/schemas/image`` (permissive, as glanceclient builds its
model from it), ``GET``/``PATCH /v2/images/<id>``, ``GET``/``PUT
/v2/images/<id>/file`` (chunked or sized uploads), and checks the user's
``X-Auth-Token`` on every request. ``stop()`` makes it unreachable.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN = "user-token-7"

_SCHEMA = {
    "name": "image",
    "properties": {
        "id": {"type": "string"},
        "name": {"type": ["null", "string"]},
        "status": {"type": "string"},
        "disk_format": {"type": ["null", "string"]},
        "container_format": {"type": ["null", "string"]},
        "size": {"type": ["null", "integer"]},
        "checksum": {"type": ["null", "string"]},
        "visibility": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "min_disk": {"type": "integer"},
        "min_ram": {"type": "integer"},
        "protected": {"type": "boolean"},
        "owner": {"type": ["null", "string"]},
        "created_at": {"type": "string"},
        "updated_at": {"type": "string"},
        "virtual_size": {"type": ["null", "integer"]},
    },
    "additionalProperties": {"type": "string"},
}


class GlanceAPI:
    """``token=None`` accepts any token (Nova's functional harness sends its own)."""

    def __init__(self, token: str | None = TOKEN) -> None:
        self.token = token
        self.images: dict[str, dict] = {}
        self.data: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.down = False  # once stopped, even kept-alive connections are dropped
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, data: bytes, disk_format: str, container_format: str, **props: str) -> str:
        image_id = str(uuid.uuid4())
        self.images[image_id] = self._record(image_id, "active", disk_format, container_format, props)
        self._store(image_id, data)
        return image_id

    def queued(self, **props: str) -> str:
        image_id = str(uuid.uuid4())
        self.images[image_id] = self._record(image_id, "queued", None, None, props)
        return image_id

    def _record(self, image_id, status, disk_format, container_format, props) -> dict:
        rec = {
            "id": image_id,
            "name": f"image-{image_id[:8]}",
            "status": status,
            "disk_format": disk_format,
            "container_format": container_format,
            "size": None,
            "checksum": None,
            "visibility": "public",
            "tags": [],
            "min_disk": 0,
            "min_ram": 0,
            "protected": False,
            "owner": "project-1",
            "created_at": "2026-01-01T00:00:00Z",
            "updated_at": "2026-01-01T00:00:00Z",
        }
        rec.update(props)
        return rec

    def _store(self, image_id: str, data: bytes) -> None:
        self.data[image_id] = data
        self.images[image_id].update(
            status="active",
            size=len(data),
            checksum=hashlib.md5(data).hexdigest(),  # noqa: S324
        )

    def stop(self) -> None:
        self.down = True
        self._server.shutdown()
        self._server.server_close()

    def _handler(self):
        glance = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _reply(self, status: int, body: bytes = b"", ctype: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

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

            def _route(self, method: str):
                glance.requests.append((method, self.path))
                if glance.down:
                    self.close_connection = True
                    self.connection.close()
                    return None
                if glance.token is not None and self.headers.get("X-Auth-Token") != glance.token:
                    self._body() if method in ("PUT", "PATCH") else None
                    self._reply(401, b"401 Unauthorized: authentication required", "text/plain")
                    return None
                if self.path.rstrip("/") == "/v2/schemas/image":
                    return "schema", False
                match = re.match(r"^/v2/images/([0-9a-f-]+)(/file)?$", self.path)
                if not match or match.group(1) not in glance.images:
                    self._body() if method in ("PUT", "PATCH") else None
                    self._reply(404, b"404 Not Found: no such image", "text/plain")
                    return None
                return match.group(1), bool(match.group(2))

            def do_GET(self):  # noqa: N802
                route = self._route("GET")
                if route is None:
                    return
                image_id, is_file = route
                if image_id == "schema":
                    self._reply(200, json.dumps(_SCHEMA).encode())
                elif not is_file:
                    self._reply(200, json.dumps(glance.images[image_id]).encode())
                elif image_id not in glance.data:
                    self._reply(204)
                else:
                    data = glance.data[image_id]
                    self.send_response(200)
                    self.send_header("Content-Type", "application/octet-stream")
                    self.send_header("Content-Length", str(len(data)))
                    self.send_header("Content-MD5", glance.images[image_id]["checksum"])
                    self.end_headers()
                    for start in range(0, len(data), 1 << 20):
                        self.wfile.write(data[start : start + (1 << 20)])

            def do_POST(self):  # noqa: N802
                glance.requests.append(("POST", self.path))
                body = json.loads(self._body() or b"{}")
                if self.path.rstrip("/") != "/v2/images":
                    self._reply(404, b"404 Not Found", "text/plain")
                    return
                image_id = body.pop("id", None) or str(uuid.uuid4())
                fields = {k: body.pop(k, None) for k in ("disk_format", "container_format")}
                rec = glance._record(
                    image_id, "queued", fields["disk_format"], fields["container_format"], body
                )
                glance.images[image_id] = rec
                self._reply(201, json.dumps(rec).encode())

            def do_DELETE(self):  # noqa: N802
                route = self._route("DELETE")
                if route is None:
                    return
                glance.images.pop(route[0], None)
                glance.data.pop(route[0], None)
                self._reply(204, ctype="text/html; charset=UTF-8")

            def do_PATCH(self):  # noqa: N802
                route = self._route("PATCH")
                if route is None:
                    return
                image_id, _ = route
                ops = json.loads(self._body() or b"[]")
                rec = glance.images[image_id]
                for op in ops:
                    key = op["path"].lstrip("/")
                    if op["op"] in ("add", "replace"):
                        rec[key] = op["value"]
                    elif op["op"] == "remove":
                        rec.pop(key, None)
                self._reply(200, json.dumps(rec).encode())

            def do_PUT(self):  # noqa: N802
                route = self._route("PUT")
                if route is None:
                    return
                image_id, is_file = route
                data = self._body()
                if not is_file:
                    self._reply(405)
                    return
                rec = glance.images[image_id]
                if not rec.get("disk_format") or not rec.get("container_format"):
                    self._reply(
                        400, b"400 Bad Request: set disk_format and container_format first", "text/plain"
                    )
                    return
                glance._store(image_id, data)
                self._reply(204, ctype="text/html; charset=UTF-8")

        return Handler
