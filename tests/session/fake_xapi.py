"""A minimal XAPI over real XML-RPC on loopback, for the session tests.

Just enough of XAPI's wire behaviour for XenAPISession: the
``Status``/``Value``/``ErrorDescription`` envelope, login and logout with
per-session bookkeeping, ``HOST_IS_SLAVE`` from pool members,
``SESSION_INVALID`` after a toolstack "restart", a few getters,
``host.call_plugin``, and ``Async.*`` tasks with ``task.cancel``. The real
simulator (``xenapi_driver.simulator``) replaces it once it exists; this file
stays small on purpose.

Each pool member is its own XML-RPC server on its own loopback address
(127.0.0.1, 127.0.0.2, ...) and the same port, as in a real pool where every
host listens on 443 and ``HOST_IS_SLAVE`` carries only the master's address.
"""

from __future__ import annotations

import contextlib
import re
import socket
import socketserver
import ssl
import threading
import uuid
import xmlrpc.client as xmlrpclib
from collections.abc import Callable
from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer


class XapiFailure(Exception):
    def __init__(self, code: str, *params: str) -> None:
        super().__init__(code, *params)
        self.description = [code, *[str(p) for p in params]]


def _ref() -> str:
    return f"OpaqueRef:{uuid.uuid4()}"


class _Handler(SimpleXMLRPCRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as XAPI does
    rpc_paths = ("/", "/RPC2")


class _Server(socketserver.ThreadingMixIn, SimpleXMLRPCServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False


class FakePool:
    """A pool of ``members`` hosts; index 0 is the master."""

    def __init__(
        self,
        members: int = 2,
        username: str = "root",
        password: str = "correct-horse-battery",
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.username = username
        self.password = password
        self.lock = threading.Lock()
        self.sessions: dict[str, dict] = {}
        self.logins = 0
        self.logouts = 0
        self.sessions_seen: set[str] = set()
        self.hosts: dict[str, dict] = {}
        self.host_order: list[str] = []  # host refs by member index
        self.master_index = 0
        self.vms: dict[str, dict] = {}
        self.tasks: dict[str, dict] = {}
        self.plugins: dict[str, dict[str, Callable[[dict], str]]] = {
            "dom0_plugin_version": {"get_version": lambda args: "1.2"},
            "echo": {"echo_json": self._echo_json},
        }
        # A method whose calls wait for ``gate`` (to hold sessions busy).
        self.gated_method: str | None = None
        self.gate = threading.Event()
        self.in_flight = 0
        self.max_in_flight = 0
        # Calls of this method always invalidate their session first (as if
        # XAPI restarted during every such call) and answer SESSION_INVALID.
        self.always_invalid_method: str | None = None
        self.plugin_calls: list[tuple[str, str, str]] = []
        # Tasks of this method stay pending until ``task_gate`` is set.
        self.task_gate = threading.Event()
        self._servers: list[_Server] = []
        self._threads: list[threading.Thread] = []
        self._start(members, tls)
        vm = _ref()
        self.vms[vm] = {"uuid": str(uuid.uuid4()), "name_label": "vm-1", "power_state": "Running"}
        self.vm_ref = vm

    # ----------------------------------------------------------- servers

    def _start(self, members: int, tls: ssl.SSLContext | None) -> None:
        for _attempt in range(20):
            servers = []
            try:
                first = _Server(("127.0.0.1", 0), requestHandler=_Handler, logRequests=False)
                servers.append(first)
                port = first.server_address[1]
                for index in range(1, members):
                    servers.append(
                        _Server((f"127.0.0.{index + 1}", port), requestHandler=_Handler, logRequests=False)
                    )
            except OSError:
                for server in servers:
                    server.server_close()
                continue
            break
        else:
            raise RuntimeError("no free loopback port for the fake pool")
        self.port = port
        self.scheme = "https" if tls else "http"
        for index, server in enumerate(servers):
            if tls:
                server.socket = tls.wrap_socket(server.socket, server_side=True)
            address = server.server_address[0]
            ref = _ref()
            self.hosts[ref] = {
                "uuid": str(uuid.uuid4()),
                "address": address,
                "hostname": f"xenserver{index + 1}",
                "name_label": f"xenserver{index + 1}",
            }
            self.host_order.append(ref)
            server.register_instance(_Endpoint(self, index))
            thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            )
            thread.start()
            self._servers.append(server)
            self._threads.append(thread)

    def url(self, member: int = 0) -> str:
        return f"{self.scheme}://127.0.0.{member + 1}:{self.port}"

    def host_ref(self, member: int) -> str:
        return self.host_order[member]

    def stop(self) -> None:
        self.gate.set()
        self.task_gate.set()
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)

    # ------------------------------------------------------------- state

    def restart_toolstack(self) -> None:
        """Like ``xe-toolstack-restart``: every session becomes invalid."""
        with self.lock:
            self.sessions.clear()

    def designate_new_master(self, member: int) -> None:
        """Like ``pool.designate_new_master``: sessions survive, the old master becomes a member."""
        self.master_index = member

    def rejoin_as_new_pool(self, master: int) -> None:
        """Like a standalone host joining another host's pool: every host gets a new
        reference in the (new) pool database (UUIDs stay) and the toolstack restarts."""
        with self.lock:
            order = []
            for ref in self.host_order:
                new = _ref()
                self.hosts[new] = self.hosts.pop(ref)
                order.append(new)
            self.host_order = order
            self.master_index = master
            self.sessions.clear()

    @property
    def live_sessions(self) -> int:
        with self.lock:
            return len(self.sessions)

    def _echo_json(self, args: dict) -> str:
        import json

        return json.dumps({"received": {k: json.loads(v) for k, v in args.items()}})


class _Endpoint:
    """The XML-RPC face of one host."""

    def __init__(self, pool: FakePool, index: int) -> None:
        self.pool = pool
        self.index = index

    @property
    def host_ref(self) -> str:
        return self.pool.host_order[self.index]

    @property
    def is_master(self) -> bool:
        return self.pool.master_index == self.index

    def _dispatch(self, method: str, params: tuple) -> dict:
        try:
            value = self._handle(method, list(params))
        except XapiFailure as failure:
            return {"Status": "Failure", "ErrorDescription": failure.description}
        return {"Status": "Success", "Value": value}

    def _master_address(self) -> str:
        return self.pool.hosts[self.pool.host_order[self.pool.master_index]]["address"]

    def _handle(self, method: str, params: list) -> object:
        pool = self.pool
        if method == "session.login_with_password":
            if len(params) < 2:
                raise XapiFailure("MESSAGE_PARAMETER_COUNT_MISMATCH", method, "2", str(len(params)))
            if not self.is_master:
                raise XapiFailure("HOST_IS_SLAVE", self._master_address())
            user, password = params[0], params[1]
            originator = params[3] if len(params) > 3 else ""
            if user != pool.username or password != pool.password:
                raise XapiFailure("SESSION_AUTHENTICATION_FAILED", user, "Authentication failure")
            ref = _ref()
            with pool.lock:
                pool.sessions[ref] = {"user": user, "originator": originator, "host": self.host_ref}
                pool.logins += 1
            return ref
        if not params:
            raise XapiFailure("MESSAGE_PARAMETER_COUNT_MISMATCH", method, "1", "0")
        session, args = params[0], params[1:]
        with pool.lock:
            if method == pool.always_invalid_method:
                pool.sessions.pop(session, None)  # XAPI forgot it, as after a restart
            valid = session in pool.sessions
        if not valid:
            raise XapiFailure("SESSION_INVALID", session)
        if not self.is_master:
            raise XapiFailure("HOST_IS_SLAVE", self._master_address())
        with pool.lock:
            pool.sessions_seen.add(session)
        if method == "session.logout":
            with pool.lock:
                pool.sessions.pop(session, None)
                pool.logouts += 1
            return ""
        if method == pool.gated_method:
            with pool.lock:
                pool.in_flight += 1
                pool.max_in_flight = max(pool.max_in_flight, pool.in_flight)
            try:
                pool.gate.wait(30)
            finally:
                with pool.lock:
                    pool.in_flight -= 1
        if method.startswith("Async."):
            return self._start_task(method[len("Async.") :], args)
        return self._call(method, session, args)

    def _call(self, method: str, session: str, args: list) -> object:
        pool = self.pool
        if method == "session.get_this_host":
            return pool.sessions[session]["host"]
        if method == "host.get_all":
            return list(pool.hosts)
        if method == "host.get_all_records":
            return dict(pool.hosts)
        if method.startswith("host.get_") and method != "host.get_by_uuid":
            rec = self._lookup(pool.hosts, "host", args[0])
            return rec if method == "host.get_record" else rec[method[len("host.get_") :]]
        if method == "host.get_by_uuid":
            for ref, rec in pool.hosts.items():
                if rec["uuid"] == args[0]:
                    return ref
            raise XapiFailure("UUID_INVALID", "host", args[0])
        if method == "VM.get_record":
            return self._lookup(pool.vms, "VM", args[0])
        if method == "VM.get_name_label":
            return self._lookup(pool.vms, "VM", args[0])["name_label"]
        if method == "VM.get_all_records_where":
            return {ref: rec for ref, rec in pool.vms.items() if _matches(args[0], rec)}
        if method == "VM.clone":
            rec = dict(self._lookup(pool.vms, "VM", args[0]), name_label=args[1], uuid=str(uuid.uuid4()))
            ref = _ref()
            pool.vms[ref] = rec
            return ref
        if method == "VM.clean_shutdown":
            rec = self._lookup(pool.vms, "VM", args[0])
            if rec["power_state"] != "Running":
                raise XapiFailure("VM_BAD_POWER_STATE", args[0], "running", rec["power_state"].lower())
            rec["power_state"] = "Halted"
            return ""
        if method == "host.call_plugin":
            self._lookup(pool.hosts, "host", args[0])
            plugin, fn, plugin_args = args[1], args[2], args[3]
            pool.plugin_calls.append((args[0], plugin, fn))
            functions = pool.plugins.get(plugin)
            if functions is None:
                raise XapiFailure("XENAPI_MISSING_PLUGIN", plugin)
            if fn not in functions:
                raise XapiFailure("UNKNOWN_XENAPI_PLUGIN_FUNCTION", fn)
            return functions[fn](plugin_args)
        if method.startswith("task."):
            return self._task_call(method, args)
        raise XapiFailure("MESSAGE_METHOD_UNKNOWN", method)

    @staticmethod
    def _lookup(table: dict, cls: str, ref: str) -> dict:
        try:
            return table[ref]
        except KeyError:
            raise XapiFailure("HANDLE_INVALID", cls, ref) from None

    # ------------------------------------------------------------- tasks

    def _start_task(self, method: str, args: list) -> str:
        ref = _ref()
        task = {"status": "pending", "result": "", "error_info": [], "progress": 0.0, "cancel": False}
        self.pool.tasks[ref] = task

        def run() -> None:
            if method == "VM.clean_shutdown" and self.pool.vms.get(args[0], {}).get("name_label") == "slow":
                # Stays pending until released or cancelled.
                while not self.pool.task_gate.wait(0.02):
                    if task["cancel"]:
                        task.update(status="cancelled", error_info=["TASK_CANCELLED", ref])
                        return
            try:
                value = self._call(method, "", args) if method != "session.get_this_host" else ""
            except XapiFailure as failure:
                task.update(status="failure", error_info=failure.description)
                return
            body = xmlrpclib.dumps((value,), methodresponse=True)
            inner = re.search(r"<param>\s*(.*?)\s*</param>", body, re.S).group(1)
            task.update(status="success", progress=1.0, result=inner if value != "" else "")

        threading.Thread(target=run, daemon=True).start()
        return ref

    def _task_call(self, method: str, args: list) -> object:
        task = self._lookup(self.pool.tasks, "task", args[0])
        if method == "task.get_status":
            return task["status"]
        if method == "task.get_record":
            return {k: v for k, v in task.items() if k != "cancel"}
        if method == "task.cancel":
            if task["status"] == "pending":
                task["cancel"] = True
                task["status"] = "cancelling"
            return ""
        if method == "task.destroy":
            del self.pool.tasks[args[0]]
            return ""
        raise XapiFailure("MESSAGE_METHOD_UNKNOWN", method)


def _matches(expr: str, rec: dict) -> bool:
    """A tiny subset of XAPI's query language: ``true`` or ``field "k"="v"`` [and ...]."""
    expr = expr.strip()
    if expr == "true":
        return True
    for clause in re.split(r"\s+and\s+", expr):
        m = re.fullmatch(r'field\s+"([^"]+)"\s*=\s*"([^"]*)"', clause.strip())
        if not m:
            raise XapiFailure("INVALID_VALUE", "expr", expr)
        if str(rec.get(m.group(1))) != m.group(2):
            return False
    return True


@contextlib.contextmanager
def black_hole() -> socket.socket:
    """A listening loopback socket that accepts TCP connections but never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield sock
    finally:
        sock.close()


def closed_port() -> int:
    """A loopback port with nothing listening (connection refused)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port
