"""A loopback Glance v2 image API for tests and benchmarks (``from tests.glance_server import ...``).

One server for every user of Glance in the tests: Nova's glanceclient (the
image layer, Nova's REST harness), the dom0 ``glance`` plug-in and
``benchmarks/bench_image.py``. It serves what they use:

* ``GET /v2/schemas/image`` (glanceclient builds its model from it);
* ``POST /v2/images``, ``GET``/``PATCH``/``DELETE /v2/images/<id>``;
* ``GET /v2/images/<id>/file`` and ``PUT /v2/images/<id>/file`` (sized or
  chunked bodies; the image must be ``queued`` with its formats set, as Glance
  requires).

Records carry what Glance computes on upload: ``size``, the MD5 ``checksum``
and, as every Glance since Rocky does, the "multihash" ``os_hash_algo``
(``sha512`` unless ``hash_algo`` says otherwise; None leaves it out, like an
older Glance) and ``os_hash_value``. Every request must carry the
``X-Auth-Token`` given (``token=None`` accepts any: Nova's functional harness
sends its own). Faults on demand for retry tests: ``drop_next`` connections
closed unanswered, ``status_next`` statuses answered first, ``truncate_next``
downloads cut in half; ``stop()`` makes it unreachable, even over kept-alive
connections. Optionally TLS.

It is quick enough to sit in benchmarks: replies go out in one write with
``TCP_NODELAY`` (a header write followed by a body write would otherwise wait
out the client's 40 ms delayed ACK on every request), and image data leaves
in one ``sendall`` of a memoryview (no per-chunk copies).
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import ssl
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
        "os_hash_algo": {"type": ["null", "string"]},
        "os_hash_value": {"type": ["null", "string"]},
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
_IMAGE_PATH = re.compile(r"^/v2/images/([0-9a-f-]+)(/file)?$")


class GlanceServer:
    """Glance's v2 image API on 127.0.0.1 (an ephemeral port; see :attr:`endpoint`)."""

    def __init__(
        self,
        token: str | None = TOKEN,
        tls: ssl.SSLContext | None = None,
        hash_algo: str | None = "sha512",
    ) -> None:
        self.token = token
        self.hash_algo = hash_algo
        self.images: dict[str, dict] = {}
        self.data: dict[str, bytes] = {}
        self.requests: list[tuple[str, str, dict]] = []  # (method, path, headers)
        self.drop_next = 0  # close this many connections without answering
        self.status_next: list[int] = []  # answer these statuses first
        self.truncate_next = 0  # send only half of this many downloads
        self.lock = threading.Lock()
        self.down = False  # once stopped, even kept-alive connections are dropped
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self.scheme = "https" if tls else "http"
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    # -- images ------------------------------------------------------------------------
    def add(self, data: bytes, disk_format: str, container_format: str, **props: str) -> str:
        """An active image holding ``data``; its id."""
        image_id = str(uuid.uuid4())
        self.images[image_id] = self._record(image_id, "queued", disk_format, container_format, props)
        self._store(image_id, data)
        return image_id

    def queued(self, **props: str) -> str:
        """A queued image (no data yet); ``props`` may set ``disk_format``/``container_format``."""
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
            "os_hash_algo": None,
            "os_hash_value": None,
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
        """Keep ``data`` and compute what Glance records for it."""
        self.data[image_id] = data
        fields = {"status": "active", "size": len(data), "checksum": hashlib.md5(data).hexdigest()}  # noqa: S324
        if self.hash_algo:
            fields.update(
                os_hash_algo=self.hash_algo, os_hash_value=hashlib.new(self.hash_algo, data).hexdigest()
            )
        else:
            for key in ("os_hash_algo", "os_hash_value"):
                self.images[image_id].pop(key, None)
        self.images[image_id].update(fields)

    def stop(self) -> None:
        self.down = True
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

    # -- HTTP --------------------------------------------------------------------------
    def _handler(self):
        glance = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, *args):
                pass

            def _reply(self, status: int, body: bytes = b"", ctype: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if body:
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
                """``(image_id, is_file)``, ``("schema", False)``, or None once answered."""
                glance.requests.append((method, self.path, dict(self.headers)))
                has_body = method in ("PUT", "PATCH", "POST")
                if glance.down:
                    self.close_connection = True
                    self.connection.close()
                    return None
                fault = glance._fault()
                if fault and fault[0] == "drop":
                    self.close_connection = True
                    self.connection.close()
                    return None
                if fault:
                    self._body() if has_body else None
                    self._reply(fault[1], b'{"error": "injected"}')
                    return None
                if glance.token is not None and self.headers.get("X-Auth-Token") != glance.token:
                    self._body() if has_body else None
                    self._reply(401, b"401 Unauthorized: authentication required", "text/plain")
                    return None
                if self.path.rstrip("/") == "/v2/schemas/image":
                    return "schema", False
                if method == "POST":
                    return ("create", False) if self.path.rstrip("/") == "/v2/images" else self._missing()
                match = _IMAGE_PATH.match(self.path)
                if not match or match.group(1) not in glance.images:
                    return self._missing(has_body)
                return match.group(1), bool(match.group(2))

            def _missing(self, has_body: bool = True) -> None:
                self._body() if has_body else None
                self._reply(404, b"404 Not Found: no such image", "text/plain")
                return None

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
                    self._send_data(image_id)

            def _send_data(self, image_id: str) -> None:
                data = glance.data[image_id]
                with glance.lock:
                    truncate = glance.truncate_next > 0
                    glance.truncate_next -= truncate
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Content-MD5", glance.images[image_id]["checksum"])
                self.end_headers()
                view = memoryview(data)
                try:
                    self.wfile.write(view[: len(data) // 2] if truncate else view)
                finally:
                    view.release()
                if truncate:
                    self.close_connection = True

            def do_POST(self):  # noqa: N802
                if self._route("POST") is None:
                    return
                body = json.loads(self._body() or b"{}")
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
                if rec["status"] != "queued":
                    self._reply(409, b'{"error": "image is not queued"}')
                    return
                if not rec.get("disk_format") or not rec.get("container_format"):
                    self._reply(
                        400, b"400 Bad Request: set disk_format and container_format first", "text/plain"
                    )
                    return
                glance._store(image_id, data)
                self._reply(204, ctype="text/html; charset=UTF-8")

        return Handler
