"""Each simulated host's HTTP(S) server: XML-RPC, JSON-RPC and HTTP handlers.

Why: clients talk to XAPI over HTTP: XML-RPC at ``/`` and ``/RPC2``,
JSON-RPC at ``/jsonrpc``, and plain HTTP for disk import/export.  Every
host of every pool runs one of these on its own loopback address, with
keep-alive (the SDK reuses connections), and can be "powered off"
(the socket closes and connections are refused).
"""

from __future__ import annotations

import base64
import json
import logging
import socket
import ssl
import threading
import xmlrpc.client
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from . import dispatch, registry, sessions, tasks
from .context import CallContext
from .errors import XapiError
from .wire import failure, json_dumps, success, to_json, xml_fault, xml_response

if TYPE_CHECKING:  # pragma: no cover
    from .world import SimHost

LOG = logging.getLogger(__name__)
MAX_BODY = 64 * 1024 * 1024


class HostServer(ThreadingHTTPServer):
    """A threaded HTTP/1.1 server bound to one simulated host's address."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, host: SimHost) -> None:
        self.sim_host = host
        self.ssl_context: ssl.SSLContext | None = host.world.ssl_context
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        super().__init__((host.address, host.port), Handler)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self.serve_forever,
                kwargs={"poll_interval": 0.1},
                name=f"xapi {self.sim_host.name}",
                daemon=True,
            )
            self._thread.start()

    def finish_request(self, request, client_address) -> None:  # type: ignore[override]
        with self._conns_lock:
            self._conns.add(request)
        try:
            if self.ssl_context is not None:
                request.settimeout(30)
                request = self.ssl_context.wrap_socket(request, server_side=True)
                request.settimeout(None)
            super().finish_request(request, client_address)
        except (OSError, ssl.SSLError):
            pass
        finally:
            with self._conns_lock:
                self._conns.discard(request)

    def stop(self) -> None:
        """Stop accepting and cut every open connection (a powered-off host)."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self.server_close()
        with self._conns_lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Request:
    """What an ``@http_handler`` receives besides ``ctx``.

    ``query`` holds the first value of each query parameter.  Use
    :meth:`respond` for a whole body, or :meth:`start` then write to
    ``wfile`` for a stream (give ``length`` to keep the connection alive).
    """

    def __init__(self, handler: Handler, method: str, path: str, query: dict[str, str]) -> None:
        self.handler = handler
        self.method = method
        self.path = path
        self.query = query
        self.headers = handler.headers
        self.rfile = handler.rfile
        self.wfile = handler.wfile
        self.responded = False

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        return int(value) if value is not None else None

    def read_body(self) -> bytes:
        """The whole request body (Content-Length or chunked)."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return b"".join(self.iter_chunks())
        n = self.content_length or 0
        return self.rfile.read(n)

    def iter_chunks(self):
        while True:
            line = self.rfile.readline().strip()
            size = int(line.split(b";")[0], 16)
            if size == 0:
                self.rfile.readline()
                return
            yield self.rfile.read(size)
            self.rfile.readline()

    def start(self, status: int, headers: dict[str, str] | None = None, length: int | None = None) -> None:
        self.responded = True
        h = self.handler
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        if length is not None:
            h.send_header("Content-Length", str(length))
        else:
            h.send_header("Connection", "close")
            h.close_connection = True
        h.end_headers()

    def respond(
        self,
        status: int,
        body: bytes | str = b"",
        content_type: str = "text/plain",
        headers: dict | None = None,
    ) -> None:
        data = body.encode("utf-8") if isinstance(body, str) else body
        hdrs = {"Content-Type": content_type, **(headers or {})}
        self.start(status, hdrs, len(data))
        if self.method != "HEAD":
            self.wfile.write(data)

    def redirect(self, location: str) -> None:
        self.respond(302, b"", headers={"Location": location})


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go in separate writes: avoid 40 ms stalls
    server: HostServer
    server_version = "xapi/25.6"
    sys_version = ""

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        LOG.debug("%s %s", self.address_string(), format % args)

    # -- verbs ---------------------------------------------------------------------

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        path = urlsplit(self.path).path
        if path in ("/", "/RPC2"):
            self._xmlrpc()
        elif path == "/jsonrpc":
            self._jsonrpc()
        else:
            self._route("POST")

    def do_GET(self) -> None:  # noqa: N802
        self._route("GET")

    def do_PUT(self) -> None:  # noqa: N802
        self._route("PUT")

    def do_HEAD(self) -> None:  # noqa: N802
        self._route("HEAD")

    def do_DELETE(self) -> None:  # noqa: N802
        self._route("DELETE")

    # -- helpers ---------------------------------------------------------------------

    @property
    def sim_host(self) -> SimHost:
        return self.server.sim_host

    def _body(self) -> bytes | None:
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            n = -1
        if n < 0 or n > MAX_BODY:
            self._plain(400, "bad Content-Length")
            return None
        return self.rfile.read(n)

    def _plain(self, status: int, text: str) -> None:
        data = text.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send(self, data: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _drop(self) -> None:
        """Close without answering (fault injection)."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _call(self, method: str, params: list) -> dict:
        world = self.sim_host.world
        try:
            return success(dispatch.call(world, self.sim_host, method, params))
        except XapiError as e:
            return failure(e.details)
        except dispatch.AsyncUnavailable:
            raise
        except Exception as e:  # noqa: BLE001 - a simulator bug is an INTERNAL_ERROR, as in XAPI
            LOG.exception("internal error in %s", method)
            return failure(["INTERNAL_ERROR", f"{type(e).__name__}: {e}"])

    # -- XML-RPC ------------------------------------------------------------------------

    def _xmlrpc(self) -> None:
        body = self._body()
        if body is None:
            return
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            self._send(xml_response(failure(["INVALID_VALUE", "request", "invalid UTF-8"])), "text/xml")
            return
        try:
            params, method = xmlrpc.client.loads(body, use_builtin_types=False)
        except Exception as e:  # noqa: BLE001 - any parse failure is a malformed request
            self._plain(500, f"malformed XML-RPC request: {e}")
            return
        if not method:
            self._plain(500, "malformed XML-RPC request: no methodName")
            return
        if self.sim_host.world.faults.take_drop(_canonical(method)):
            self._drop()
            return
        try:
            result = self._call(method, list(params))
        except dispatch.AsyncUnavailable:
            self._send(xml_fault(-1, f"Unknown method: {method}"), "text/xml")
            return
        self._send(xml_response(result), "text/xml")

    # -- JSON-RPC -----------------------------------------------------------------------

    def _jsonrpc(self) -> None:
        body = self._body()
        if body is None:
            return
        try:
            req = json.loads(body)
            method = req["method"]
            params = req.get("params", [])
            if not isinstance(params, list):
                raise ValueError("params must be a list")
        except Exception as e:  # noqa: BLE001
            self._plain(500, f"malformed JSON-RPC request: {e}")
            return
        v2 = req.get("jsonrpc") == "2.0"
        rid = req.get("id")
        if self.sim_host.world.faults.take_drop(_canonical(method)):
            self._drop()
            return
        try:
            result = self._call(method, params)
        except dispatch.AsyncUnavailable:
            result = failure(["MESSAGE_METHOD_UNKNOWN", method])
        if result["Status"] == "Success":
            out = {"result": to_json(result["Value"]), "id": rid}
            if v2:
                out["jsonrpc"] = "2.0"
            else:
                out["error"] = None
        else:
            desc = result["ErrorDescription"]
            err = {"code": 1, "message": desc[0], "data": desc[1:]}
            out = {"error": err, "id": rid}
            if v2:
                out["jsonrpc"] = "2.0"
            else:
                out["result"] = None
        self._send(json_dumps(out), "application/json")

    # -- HTTP handlers ----------------------------------------------------------------------

    def _route(self, verb: str) -> None:
        parts = urlsplit(self.path)
        route = registry.lookup_http(verb, parts.path)
        if route is None and verb == "HEAD":
            route = registry.lookup_http("GET", parts.path)
        if route is None:
            self._discard_body()
            self._plain(404, f"no handler for {verb} {parts.path}")
            return
        query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        host = self.sim_host
        world = host.world
        pool = host.pool
        if world.faults.take_drop(parts.path):
            self._drop()
            return
        if world.faults.latency:
            import time

            time.sleep(world.faults.latency)
        world.count(f"{verb} {parts.path}")
        ctx = CallContext(world=world, pool=pool, sim_host=host, method=f"{verb} {parts.path}")
        if route.auth:
            session = self._http_session(query)
            if session is None:
                self._discard_body()
                self._plain(401, "valid session_id or basic credentials required")
                return
            ctx.session = session
        task = query.get("task_id")
        if task:
            if not pool.db.exists("task", task):
                self._discard_body()
                self._plain(404, f"task {task} not found")
                return
            ctx.task = task
        request = Request(self, verb, parts.path, query)
        try:
            value = route.func(ctx, request)
        except XapiError as e:
            if task:
                tasks.fail(pool.db, task, e.details)
            if not request.responded:
                self._discard_body()
                request.respond(500, " ".join(e.details))
            else:
                self.close_connection = True
            return
        except (BrokenPipeError, ConnectionResetError):
            if task:
                tasks.fail(pool.db, task, ["INTERNAL_ERROR", "connection lost"])
            self.close_connection = True
            return
        except Exception as e:  # noqa: BLE001
            LOG.exception("HTTP handler %s failed", parts.path)
            if task:
                tasks.fail(pool.db, task, ["INTERNAL_ERROR", f"{type(e).__name__}: {e}"])
            if not request.responded:
                request.respond(500, f"INTERNAL_ERROR {type(e).__name__}: {e}")
            else:
                self.close_connection = True
            return
        if task:
            tasks.succeed(pool.db, task, value)
        if not request.responded:
            request.respond(200, b"")

    def _discard_body(self) -> None:
        n = self.headers.get("Content-Length")
        if n and n.isdigit() and int(n) <= MAX_BODY:
            self.rfile.read(int(n))
        else:
            self.close_connection = True

    def _http_session(self, query: dict[str, str]) -> str | None:
        pool = self.sim_host.pool
        ref = query.get("session_id")
        if not ref:
            cookie = self.headers.get("Cookie") or ""
            for part in cookie.split(";"):
                k, _, v = part.strip().partition("=")
                if k == "session_id":
                    ref = v
        if ref:
            try:
                sessions.validate(pool, ref)
                return ref
            except XapiError:
                return None
        auth = self.headers.get("Authorization") or ""
        if auth.lower().startswith("basic "):
            try:
                user, _, pwd = base64.b64decode(auth[6:]).decode("utf-8").partition(":")
            except Exception:  # noqa: BLE001
                return None
            try:
                return sessions.login(pool, self.sim_host, user, pwd, "http-basic")
            except XapiError:
                return None
        return None


def _canonical(method: str) -> str:
    return method.replace("Async.", "", 1) if method.startswith("Async.") else method
