"""A small loopback XAPI for plug-in tests: XML-RPC host calls and the xenstore endpoint.

Why: the plug-ins talk to their host's XAPI (through XenAPIPlugin's session)
and to XenStore (through the xenstore-* tools, which use the simulator's
``/_simulator/xenstore`` endpoint, INTERFACES §3). This double speaks the
real wire formats for the few calls the plug-ins make so each plug-in can be
tested on its own; the XenStore and guest agent behind it are the
simulator's own (xenapi_driver.simulator.guest_agent).
"""

from __future__ import annotations

import json
import threading
import uuid
import xmlrpc.client
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from xenapi_driver.simulator.guest_agent import GuestAgents, XenStore, XenStoreError


class Failure(Exception):
    def __init__(self, *description: str) -> None:
        super().__init__(*description)
        self.description = [str(d) for d in description]


class XapiDouble:
    """Hosts (uuid -> record), an SR per host, XenStore, a call log."""

    def __init__(self) -> None:
        self.hosts: dict[str, dict] = {}
        self.srs: dict[str, dict] = {}
        self.store = XenStore()
        self.agents = GuestAgents(self.store)
        self.calls: list[tuple[str, tuple]] = []
        self.running_vms: set[str] = set()
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def add_host(self, address: str, *, sr_uuid: str | None = None) -> str:
        host_uuid = str(uuid.uuid4())
        sr_uuid = sr_uuid or str(uuid.uuid4())
        ref = f"OpaqueRef:{host_uuid}"
        self.hosts[ref] = {
            "uuid": host_uuid,
            "name_label": f"host-{address}",
            "hostname": f"host-{address}",
            "address": address,
            "enabled": True,
            "memory_overhead": "123",
            "metrics": f"OpaqueRef:metrics-{host_uuid}",
            "cpu_info": {
                "cpu_count": "4",
                "modelname": "Simulated CPU",
                "vendor": "GenuineIntel",
                "speed": "2400",
            },
            "host_CPUs": [],
            "capabilities": ["xen-3.0-x86_64", "hvm-3.0-x86_64"],
            "other_config": {},
            "software_version": {"product_brand": "XCP-ng", "product_version": "8.3.0", "xapi": "24.0"},
            "PBDs": [f"OpaqueRef:pbd-{sr_uuid}"],
        }
        self.srs[f"OpaqueRef:{sr_uuid}"] = {
            "uuid": sr_uuid,
            "type": "ext",
            "shared": False,
            "content_type": "user",
            "physical_size": str(100 * 2**30),
            "physical_utilisation": str(10 * 2**30),
        }
        return host_uuid

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ------------------------------------------------------------ XAPI calls
    def _host(self, ref: str) -> dict:
        if ref not in self.hosts:
            raise Failure("HANDLE_INVALID", "host", ref)
        return self.hosts[ref]

    def dispatch(self, method: str, params: tuple):
        self.calls.append((method, params))
        name = method.replace("_", ".", 1) if "." not in method else method
        args = params[1:]
        if name == "session.login_with_password":
            return "OpaqueRef:session-login"
        if name == "session.logout":
            return ""
        if name == "host.get_by_uuid":
            for ref, rec in self.hosts.items():
                if rec["uuid"] == args[0]:
                    return ref
            raise Failure("UUID_INVALID", "host", args[0])
        if name == "host.get_record":
            return self._host(args[0])
        if name == "host.get_address":
            return self._host(args[0])["address"]
        if name == "host.get_enabled":
            return self._host(args[0])["enabled"]
        if name == "host.enable":
            self._host(args[0])["enabled"] = True
            return ""
        if name == "host.disable":
            self._host(args[0])["enabled"] = False
            return ""
        if name in ("host.reboot", "host.shutdown"):
            host = self._host(args[0])
            if host["enabled"]:
                raise Failure("HOST_NOT_DISABLED")
            if self.running_vms:
                raise Failure("HOST_IN_USE", args[0], "vm", sorted(self.running_vms)[0])
            host["power"] = name.split(".")[1]
            return ""
        if name == "host.compute_free_memory":
            return "6000000000"
        if name == "host_metrics.get_record":
            return {"memory_total": "8589934592", "memory_free": "6442450944"}
        if name == "PBD.get_SR":
            return "OpaqueRef:" + args[0].split("pbd-", 1)[1]
        if name == "SR.get_record":
            return self.srs[args[0]]
        raise Failure("MESSAGE_METHOD_UNKNOWN", method)

    def xenstore(self, body: dict) -> dict:
        op, path = body.get("op"), body.get("path", "")
        try:
            if op == "read":
                return {"ok": True, "value": self.store.read(path)}
            if op == "write":
                self.store.write(path, body.get("value", ""))
                return {"ok": True, "value": None}
            if op == "rm":
                if not self.store.exists(path):
                    return {"ok": False, "error": f"ENOENT: {path}"}
                self.store.rm(path)
                return {"ok": True, "value": None}
            if op == "exists":
                return {"ok": True, "value": self.store.exists(path)}
            if op == "ls":
                return {"ok": True, "value": self.store.ls(path)}
            if op == "list":
                return {"ok": True, "value": self.store.list(path)}
        except XenStoreError as exc:
            return {"ok": False, "error": str(exc)}
        return {"ok": False, "error": f"unknown op {op!r}"}

    def _handler(self):
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path == "/_simulator/xenstore":
                    reply = json.dumps(double.xenstore(json.loads(body))).encode()
                    content_type = "application/json"
                else:
                    params, method = xmlrpc.client.loads(body)
                    try:
                        value = {"Status": "Success", "Value": double.dispatch(method, params)}
                    except Failure as exc:
                        value = {"Status": "Failure", "ErrorDescription": exc.description}
                    reply = xmlrpc.client.dumps((value,), methodresponse=True, allow_none=True).encode()
                    content_type = "text/xml"
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        return Handler
