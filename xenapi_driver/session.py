"""The one door to XAPI: a pool of logged-in sessions to the pool master.

Every XAPI operation of the driver goes through :class:`XenAPISession`. It

* logs in with the ``XenAPI`` SDK from PyPI (``login_with_password`` with a
  distinctive originator, because XAPI garbage-collects sessions per
  originator), within ``login_timeout``;
* follows ``HOST_IS_SLAVE`` to the pool master, while remembering which host
  this nova-compute manages (the member it was pointed at);
* keeps at most ``concurrent`` sessions, shared by threads: callers block
  while all are busy. Plain ``threading``: Nova 34 runs nova-compute in
  native threading mode and makes ``import eventlet`` fail;
* logs in again and retries once on ``SESSION_INVALID`` (XAPI restarted or
  garbage-collected the session), and turns every other failure into a
  :class:`~xenapi_driver.exception.XenAPIError` with XAPI's code and
  parameters;
* never puts the password in a log line or an exception.

The SDK's own ``xenapi`` dispatcher re-logs in up to three times and then
loses the error code; we use the SDK for the transport and login/logout and
parse XAPI's ``Status``/``Value``/``ErrorDescription`` envelope ourselves.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import socket
import ssl
import threading
import time
import urllib.parse
import xmlrpc.client as xmlrpclib
from collections.abc import Iterator
from typing import Any

import XenAPI

from xenapi_driver import exception

LOG = logging.getLogger(__name__)

#: The XAPI client API version we announce at login.
API_VERSION = "1.0"
#: The dom0 plug-in that reports the installed plug-ins' version.
VERSION_PLUGIN = "dom0_plugin_version"
#: The plug-in version this driver needs: same major, at least this minor.
#: Raise the minor when the driver starts using a new plug-in function, the
#: major when a plug-in changes incompatibly (with plugins/.../dom0_utils.py).
REQUIRED_PLUGIN_VERSION = "1.1"
#: How many HOST_IS_SLAVE redirects to follow before giving up (a loop).
_MAX_REDIRECTS = 3
#: Polling interval bounds for Async tasks (seconds). Between them a task is
#: polled every 1/_TASK_POLL_LAG of the time it has run so far, so it is seen
#: finished at most ~1/_TASK_POLL_LAG (+ _TASK_POLL_MIN) of its run time late,
#: in O(log) polls (doubling intervals saw a 0.8 s task only at 1.55 s).
_TASK_POLL_MIN = 0.02
_TASK_POLL_MAX = 1.0
_TASK_POLL_LAG = 8


# --------------------------------------------------------------------- URLs


def _split_url(url: str) -> urllib.parse.SplitResult:
    """Parse and check a connection URL; refuse what cannot work, clearly."""
    if not url:
        raise exception.ConfigurationError(
            "[xenserver] connection_url is not set: give the XAPI URL of the XenServer host "
            "this nova-compute manages, e.g. https://xenserver1.example.org"
        )
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise exception.ConfigurationError(
            f"[xenserver] connection_url {_display_url(url)!r} is not an http:// or https:// URL "
            "with a host name, e.g. https://xenserver1.example.org"
        )
    try:
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError as exc:
        raise exception.ConfigurationError(
            f"[xenserver] connection_url {_display_url(url)!r} has an invalid port: {exc}"
        ) from None
    return parts


def _display_url(url: str) -> str:
    """The URL without any ``user:password@`` part, safe for messages."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def _netloc(host: str, port: int | None) -> str:
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{host}:{port}" if port else host


def _split_address(address: str) -> tuple[str, int | None]:
    """Split a HOST_IS_SLAVE address into host and optional port.

    XAPI sends a bare address (all pool members listen on the same port);
    ``host:port`` and ``[v6]:port`` are accepted too.
    """
    address = address.strip()
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif address.count(":") == 1:
        host, _, port = address.partition(":")
    else:
        host, port = address, ""
    return host, int(port) if port.isdigit() else None


def _url_for_master(url: str, master_address: str) -> str:
    """``url`` with its host replaced by the master's: same scheme, port and path."""
    parts = urllib.parse.urlsplit(url)
    host, port = _split_address(master_address)
    netloc = _netloc(host, port if port is not None else parts.port)
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def _host_addresses(name: str) -> set[str]:
    """``name`` and every address it resolves to (for matching host records)."""
    found = {name}
    try:
        for info in socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP):
            found.add(info[4][0])
    except OSError:
        pass
    return found


# ---------------------------------------------------------------- transport


class _TimeoutTransportMixin:
    """xmlrpc transport with a bounded connect and a per-call read timeout.

    ``connect_timeout`` bounds establishing the TCP (and TLS) connection;
    ``read_timeout`` (None: wait as long as XAPI takes) bounds waiting for
    the answer. One transport belongs to one pooled session, used by one
    thread at a time, so changing the timeouts between calls is safe.
    """

    connect_timeout: float | None = None
    read_timeout: float | None = None

    def make_connection(self, host):  # type: ignore[no-untyped-def]
        conn = super().make_connection(host)  # type: ignore[misc]
        conn.timeout = self.connect_timeout
        return conn

    def send_request(self, host, handler, request_body, debug):  # type: ignore[no-untyped-def]
        conn = super().send_request(host, handler, request_body, debug)  # type: ignore[misc]
        if conn.sock is not None:
            conn.sock.settimeout(self.read_timeout)
        return conn


class _Transport(_TimeoutTransportMixin, xmlrpclib.Transport):
    pass


class _SafeTransport(_TimeoutTransportMixin, xmlrpclib.SafeTransport):
    pass


def _ssl_context(ca_file: str | None, insecure: bool) -> ssl.SSLContext:
    if insecure:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise exception.ConfigurationError(
            f"[xenserver] ca_file {ca_file!r} cannot be used as a CA bundle: {exc}"
        ) from None


class _Conn:
    """One logged-in SDK session and its transport (pooled)."""

    __slots__ = ("sdk", "transport", "url")

    def __init__(self, sdk: XenAPI.Session, transport: _TimeoutTransportMixin, url: str) -> None:
        self.sdk = sdk
        self.transport = transport
        self.url = url

    @property
    def handle(self) -> str:
        return self.sdk._session


# ------------------------------------------------------------------ session


class XenAPISession:
    """A bounded pool of XAPI sessions to the pool master (thread-safe).

    Construction logs in once (so a wrong URL, password or certificate is
    reported at start-up) and finds the managed host; the other sessions are
    opened on demand, up to ``concurrent``.
    """

    def __init__(
        self,
        url: str,
        username: str,
        password: str,
        *,
        originator: str = "xenapi-driver",
        concurrent: int = 5,
        login_timeout: float = 10.0,
        ca_file: str | None = None,
        insecure: bool = False,
        call_timeout: float | None = None,
    ) -> None:
        parts = _split_url(url)
        if concurrent < 1:
            raise exception.ConfigurationError(
                f"[xenserver] connection_concurrent must be at least 1 (got {concurrent})"
            )
        self.url = _display_url(url)
        self._login_url = urllib.parse.urlunsplit(
            (parts.scheme, parts.netloc.rpartition("@")[2], parts.path or "/", parts.query, "")
        )
        self.username = username
        self.__password = password or ""
        self.originator = originator
        self.login_timeout = float(login_timeout)
        self.call_timeout = call_timeout
        self._ca_file = ca_file
        self._insecure = insecure
        self._concurrent = int(concurrent)

        #: URL of the pool master all calls go to (differs from ``url`` after
        #: a HOST_IS_SLAVE redirect).
        self.master_url = self._login_url
        self.host_ref: str | None = None
        self.host_uuid: str | None = None
        self.host_address: str | None = None

        self._cond = threading.Condition()
        self._idle: list[_Conn] = []
        self._created = 0
        self._closed = False

        first, redirected = self._open(initial=True)
        self._created = 1
        try:
            self._find_managed_host(first, parts.hostname if redirected else None)
        except BaseException:
            self._created = 0
            self._logout(first)
            raise
        self._idle.append(first)
        LOG.info(
            "Connected to XAPI at %s as %s (pool master %s); managing host %s (%s)",
            self.url,
            self.username,
            _display_url(self.master_url),
            self.host_address,
            self.host_uuid,
        )

    @classmethod
    def from_conf(cls, conf: Any = None) -> XenAPISession:
        """Build the session from nova.conf's ``[xenserver]`` options."""
        from xenapi_driver import conf as xconf

        conf = conf if conf is not None else xconf.CONF
        xconf.register_opts(conf)
        opts = conf.xenserver
        return cls(
            opts.connection_url,
            opts.connection_username,
            opts.connection_password,
            originator=opts.originator,
            concurrent=opts.connection_concurrent,
            login_timeout=opts.login_timeout,
            ca_file=opts.ca_file,
            insecure=opts.insecure,
        )

    def __repr__(self) -> str:
        return f"<XenAPISession {self.url} user={self.username!r} master={_display_url(self.master_url)}>"

    # ------------------------------------------------------------ login

    def _new_conn(self, url: str) -> _Conn:
        if url.startswith("https:"):
            transport: _TimeoutTransportMixin = _SafeTransport(context=self.ssl_context())
        else:
            transport = _Transport()
        transport.connect_timeout = self.login_timeout
        sdk = XenAPI.Session(url, transport=transport)
        return _Conn(sdk, transport, url)

    def _open(self, initial: bool = False) -> tuple[_Conn, bool]:
        """Log in a new session on the master, following HOST_IS_SLAVE.

        Returns the connection and whether a redirect happened. On the first
        login the redirect target becomes ``master_url``; later logins start
        from ``master_url`` (and follow a new master after a pool change).
        """
        url = self._login_url if initial else self.master_url
        redirected = False
        for _hop in range(_MAX_REDIRECTS + 1):
            conn = self._new_conn(url)
            try:
                self._login(conn)
            except exception.XenAPIError as exc:
                if exc.code != "HOST_IS_SLAVE" or not exc.params:
                    raise
                master = _url_for_master(url, exc.params[0])
                LOG.info(
                    "%s is a pool member whose master is %s: sending calls to the master",
                    _display_url(url),
                    _display_url(master),
                )
                if master == url:
                    break
                url = master
                redirected = True
                continue
            self.master_url = url
            return conn, redirected
        raise exception.XenAPILoginError(
            "HOST_IS_SLAVE",
            [url],
            url=self.url,
            username=self.username,
            message=(
                f"Cannot find the pool master from {self.url}: XAPI keeps answering HOST_IS_SLAVE "
                f"(last tried {_display_url(url)}). Point [xenserver] connection_url at a host of "
                "a healthy pool."
            ),
        )

    def _login(self, conn: _Conn) -> None:
        """Log ``conn`` in with the SDK, within ``login_timeout``."""
        conn.transport.read_timeout = self.login_timeout
        shown = _display_url(conn.url)
        try:
            conn.sdk.login_with_password(self.username, self.__password, API_VERSION, self.originator)
        except XenAPI.Failure as exc:
            details = [str(d) for d in (exc.details or ["UNKNOWN"])]
            code, params = details[0], details[1:]
            if code == "HOST_IS_SLAVE":
                raise exception.XenAPIError(code, params, method="session.login_with_password") from None
            if code == "SESSION_AUTHENTICATION_FAILED":
                why = f"XAPI refused the user name or password ({params[-1] if params else code})"
            else:
                why = f"XAPI answered {code} {params}"
            raise exception.XenAPILoginError(
                code,
                params,
                url=shown,
                username=self.username,
                message=(
                    f"Cannot log in to XAPI at {shown} as user {self.username!r}: {why}. "
                    "Check [xenserver] connection_username and connection_password."
                ),
            ) from None
        except TimeoutError:
            raise exception.XenAPIUnreachableError(
                "CONNECTION_TIMEOUT",
                [shown, str(self.login_timeout)],
                url=shown,
                username=self.username,
                message=(
                    f"Cannot log in to XAPI at {shown} as user {self.username!r}: no answer within "
                    f"{self.login_timeout:g} s ([xenserver] login_timeout). Check that the host is up, "
                    "that XAPI runs on it, and that connection_url has the right address and port."
                ),
            ) from None
        except ssl.SSLCertVerificationError as exc:
            raise exception.XenAPIUnreachableError(
                "TLS_VERIFICATION_FAILED",
                [shown, str(exc.verify_message)],
                url=shown,
                username=self.username,
                message=(
                    f"Cannot log in to XAPI at {shown} as user {self.username!r}: its TLS certificate "
                    f"was not trusted ({exc.verify_message}). Set [xenserver] ca_file to the CA that "
                    "signed it (XenServer's default certificate is self-signed)."
                ),
            ) from None
        except (OSError, http.client.HTTPException, xmlrpclib.ProtocolError, xmlrpclib.Fault) as exc:
            raise exception.XenAPIUnreachableError(
                "CONNECTION_FAILED",
                [shown, _describe(exc)],
                url=shown,
                username=self.username,
                message=(
                    f"Cannot log in to XAPI at {shown} as user {self.username!r}: {_describe(exc)}. "
                    "Check that the host is up, that XAPI runs on it, and that [xenserver] "
                    "connection_url has the right scheme, address and port."
                ),
            ) from None
        finally:
            conn.transport.read_timeout = self.call_timeout
        LOG.debug("Logged in to %s as %s (originator %s)", shown, self.username, self.originator)

    def _relogin(self, conn: _Conn) -> None:
        """Replace ``conn``'s session by a fresh one on the master (in place)."""
        with contextlib.suppress(Exception):
            conn.transport.close()
        fresh, redirected = self._open()
        conn.sdk, conn.transport, conn.url = fresh.sdk, fresh.transport, fresh.url
        if redirected:
            self._rehome(conn)

    def _rehome(self, conn: _Conn) -> None:
        """The pool master changed: find the managed host again on the new one.

        A host that joins a pool (or a pool whose master moved) keeps its UUID
        but may get a new reference in the pool's database.
        """
        try:
            with self._bounded_reads(conn):
                ref = self._call_on(conn, "host.get_by_uuid", (self.host_uuid,))
        except exception.XenAPIError as exc:
            LOG.error(
                "The pool master is now %s, but it does not know the managed host %s (%s): %s",
                _display_url(self.master_url),
                self.host_address,
                self.host_uuid,
                exc,
            )
            raise
        if ref != self.host_ref:
            LOG.info(
                "The pool master is now %s; the managed host %s (%s) is %s there",
                _display_url(self.master_url),
                self.host_address,
                self.host_uuid,
                ref,
            )
        self.host_ref = ref

    def _logout(self, conn: _Conn) -> None:
        if conn.sdk._session is None:
            return
        conn.transport.read_timeout = self.login_timeout
        try:
            conn.sdk.xenapi.session.logout()
        except Exception as exc:  # best effort: XAPI may already be gone
            LOG.debug("Logging out of %s failed (ignored): %s", _display_url(conn.url), _describe(exc))
        finally:
            with contextlib.suppress(Exception):
                conn.transport.close()

    @contextlib.contextmanager
    def _bounded_reads(self, conn: _Conn) -> Iterator[None]:
        """Bound answers by ``login_timeout`` for the quick calls made while connecting."""
        conn.transport.read_timeout = self.login_timeout
        try:
            yield
        finally:
            conn.transport.read_timeout = self.call_timeout

    def _find_managed_host(self, conn: _Conn, member_host: str | None) -> None:
        """Record the host this compute manages.

        Without a redirect it is the host we logged in to. After
        HOST_IS_SLAVE it is the member named by ``connection_url``, found on
        the master by its address.
        """
        if member_host is None:
            with self._bounded_reads(conn):
                ref = self._call_on(conn, "session.get_this_host", (conn.handle,))
                rec = self._call_on(conn, "host.get_record", (ref,))
        else:
            wanted = _host_addresses(member_host)
            with self._bounded_reads(conn):
                records = self._call_on(conn, "host.get_all_records", ())
            matches = [
                (ref, rec)
                for ref, rec in records.items()
                if rec.get("address") in wanted or rec.get("hostname") == member_host
            ]
            if len(matches) != 1:
                found = ", ".join(sorted(str(r.get("address")) for r in records.values())) or "none"
                raise exception.XenAPIError(
                    "HOST_NOT_FOUND" if not matches else "HOST_AMBIGUOUS",
                    [member_host],
                    url=self.url,
                    message=(
                        f"{self.url} is a member of the pool whose master is "
                        f"{_display_url(self.master_url)}, but {'no' if not matches else 'more than one'} "
                        f"host of that pool has the address {member_host!r} (pool host addresses: "
                        f"{found}). Set [xenserver] connection_url to the managed host's management "
                        "address."
                    ),
                )
            ref, rec = matches[0]
        self.host_ref = ref
        self.host_uuid = rec.get("uuid")
        self.host_address = rec.get("address")

    # ------------------------------------------------------------- pool

    def _acquire(self) -> _Conn:
        with self._cond:
            waited = False
            while True:
                if self._closed:
                    raise exception.XenAPISessionClosed(
                        "SESSION_CLOSED", [self.url], message=f"The XAPI session to {self.url} is closed"
                    )
                if self._idle:
                    return self._idle.pop()
                if self._created < self._concurrent:
                    self._created += 1
                    break
                if not waited:
                    LOG.debug("All %d XAPI sessions are busy; waiting for one", self._concurrent)
                    waited = True
                self._cond.wait()
        try:
            conn, redirected = self._open()
            if redirected:
                self._rehome(conn)
        except BaseException:
            with self._cond:
                self._created -= 1
                self._cond.notify()
            raise
        return conn

    def _release(self, conn: _Conn) -> None:
        with self._cond:
            if not self._closed:
                self._idle.append(conn)
                self._cond.notify()
                return
            self._created -= 1
        self._logout(conn)

    @contextlib.contextmanager
    def _borrow(self) -> Iterator[_Conn]:
        conn = self._acquire()
        try:
            yield conn
        finally:
            self._release(conn)

    @contextlib.contextmanager
    def borrow_session_id(self) -> Iterator[str]:
        """A logged-in session reference for XAPI's HTTP handlers, held for the block.

        HTTP transfers (``/import_raw_vdi``, ``/export_raw_vdi``, consoles) name
        a session in their query; holding it from the pool keeps it from being
        logged out or reused by a concurrent XML-RPC caller meanwhile.
        """
        with self._borrow() as conn:
            yield conn.handle

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS settings this session uses, for the HTTP connections beside it."""
        return _ssl_context(self._ca_file, self._insecure)

    def http_connection(self, url: str, timeout: float) -> http.client.HTTPConnection:
        """A connection to ``url``'s host for XAPI's HTTP handlers (VDI import/export).

        Verified with this session's TLS settings, so a disk stream trusts
        exactly what the XML-RPC calls trust.
        """
        parts = urllib.parse.urlsplit(url)
        if parts.scheme == "https":
            return http.client.HTTPSConnection(
                parts.hostname, parts.port, timeout=timeout, context=self.ssl_context()
            )
        return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)

    def close(self) -> None:
        """Log out every pooled session; later calls raise XenAPISessionClosed.

        Sessions busy in other threads are logged out as soon as their call
        returns.
        """
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._created -= len(idle)
            self._cond.notify_all()
        for conn in idle:
            self._logout(conn)
        LOG.debug("Closed %d XAPI session(s) to %s", len(idle), _display_url(self.master_url))

    def __enter__(self) -> XenAPISession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------ calls

    def _call_on(self, conn: _Conn, method: str, args: tuple[Any, ...]) -> Any:
        """Call ``method`` on ``conn``; re-login and retry once on SESSION_INVALID."""
        for attempt in (1, 2):
            LOG.debug("XAPI call %s", method)  # never the arguments: they may hold secrets
            try:
                result = getattr(conn.sdk, method)(conn.handle, *args)
            except TimeoutError:
                raise exception.XenAPIConnectionError(
                    "CONNECTION_TIMEOUT",
                    [_display_url(conn.url)],
                    method=method,
                    url=_display_url(conn.url),
                    message=f"XAPI at {_display_url(conn.url)} did not answer {method} in time",
                ) from None
            except xmlrpclib.Fault as exc:
                raise exception.XenAPIError(
                    "XMLRPC_FAULT",
                    [str(exc.faultCode), str(exc.faultString)],
                    method=method,
                    url=_display_url(conn.url),
                ) from None
            except (OSError, http.client.HTTPException, xmlrpclib.ProtocolError) as exc:
                raise exception.XenAPIConnectionError(
                    "CONNECTION_FAILED",
                    [_display_url(conn.url), _describe(exc)],
                    method=method,
                    url=_display_url(conn.url),
                    message=f"Lost the connection to XAPI at {_display_url(conn.url)} during "
                    f"{method}: {_describe(exc)}",
                ) from None
            if not isinstance(result, dict) or "Status" not in result:
                raise exception.XenAPIError(
                    "INVALID_RESPONSE",
                    [repr(result)[:200]],
                    method=method,
                    url=_display_url(conn.url),
                )
            if result["Status"] == "Success":
                return result.get("Value", "")
            details = [str(d) for d in (result.get("ErrorDescription") or ["UNKNOWN_ERROR"])]
            if details[0] == "SESSION_INVALID" and attempt == 1:
                LOG.info(
                    "XAPI session on %s is no longer valid (XAPI restarted or expired it); "
                    "logging in again and retrying %s",
                    _display_url(conn.url),
                    method,
                )
                self._relogin(conn)
                continue
            if details[0] == "HOST_IS_SLAVE" and attempt == 1 and len(details) > 1:
                # The pool master moved (pool.designate_new_master, or our host
                # joined a pool): follow it, then retry once.
                old_handle = conn.handle
                LOG.info(
                    "%s is no longer the pool master; following it to %s and retrying %s",
                    _display_url(conn.url),
                    details[1],
                    method,
                )
                self._relogin(conn)  # logging in there redirects us to the new master
                self._forget_session(conn, old_handle)
                continue
            raise exception.XenAPIError(details[0], details[1:], method=method, url=_display_url(conn.url))
        raise AssertionError("unreachable")  # pragma: no cover

    def _forget_session(self, conn: _Conn, handle: str | None) -> None:
        """Best-effort logout of an old session that may still be alive in the pool."""
        if not handle or handle == conn.handle:
            return
        with contextlib.suppress(Exception):
            getattr(conn.sdk, "session.logout")(handle)

    def call_xenapi(self, method: str, *args: Any) -> Any:
        """Call a XAPI message, e.g. ``call_xenapi("VM.get_record", vm_ref)``.

        The session argument is added here. Raises XenAPIError (with XAPI's
        code and params) on failure.
        """
        with self._borrow() as conn:
            return self._call_on(conn, method, args)

    def get_rec(self, cls: str, ref: str) -> dict[str, Any] | None:
        """``<cls>.get_record(ref)``, or None when the object no longer exists."""
        try:
            return self.call_xenapi(f"{cls}.get_record", ref)
        except exception.XenAPIError as exc:
            if exc.code == "HANDLE_INVALID":
                return None
            raise

    def get_all_records_where(self, cls: str, expr: str) -> dict[str, dict[str, Any]]:
        """``<cls>.get_all_records_where(expr)`` (XAPI's query syntax)."""
        return self.call_xenapi(f"{cls}.get_all_records_where", expr)

    def call_plugin(self, plugin: str, fn: str, args: dict[str, str] | None = None) -> str:
        """Run dom0 plug-in ``plugin``'s function ``fn`` on the managed host.

        ``args`` maps strings to strings, as XAPI requires; the result is
        the plug-in's string.
        """
        args = {str(k): str(v) for k, v in (args or {}).items()}
        return self.call_xenapi("host.call_plugin", self.host_ref, plugin, fn, args)

    def call_plugin_serialized(self, plugin: str, fn: str, *args: Any, **kwargs: Any) -> Any:
        """Call a plug-in with structured arguments, as JSON (never pickle).

        Each keyword argument travels JSON-encoded under its own name;
        positional arguments, if any, as a JSON list under ``"args"``. The
        plug-in's result string is decoded from JSON ("" gives None).
        JSON, because dom0 and the compute VM run different Python versions
        and unpickling a caller's data in dom0 would run its code there.
        """
        wire = {name: json.dumps(value) for name, value in kwargs.items()}
        if args:
            if "args" in wire:
                raise TypeError("call_plugin_serialized: 'args' cannot be both positional and keyword")
            wire["args"] = json.dumps(list(args))
        result = self.call_plugin(plugin, fn, wire)
        if result in ("", None):
            return None
        try:
            return json.loads(result)
        except ValueError:
            raise exception.XenAPIError(
                "INVALID_PLUGIN_RESULT",
                [plugin, fn, result[:200]],
                message=f"dom0 plug-in {plugin}.{fn} on host {self.host_address} returned "
                f"non-JSON output: {result[:200]!r}",
            ) from None

    def call_async(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        """Run ``Async.<method>`` and wait for its task.

        Returns the task's result decoded from XAPI's XML-RPC serialisation
        (None for void). A failed task raises XenAPIError with its
        ``error_info``; past ``timeout`` seconds the task is cancelled and
        XenAPITaskTimeout is raised. No pooled session is held while waiting.
        """
        task = self.call_xenapi(f"Async.{method}", *args)
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout
        try:
            while True:
                status = self.call_xenapi("task.get_status", task)
                if status not in ("pending", "cancelling"):
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    LOG.warning("%s did not finish within %s s; cancelling task %s", method, timeout, task)
                    try:
                        self.call_xenapi("task.cancel", task)
                    except exception.XenAPIError as exc:
                        LOG.debug("Cancelling task %s failed: %s", task, exc)
                    raise exception.XenAPITaskTimeout(
                        "TASK_TIMEOUT",
                        [task, method, f"{timeout:g}"],
                        method=method,
                        url=_display_url(self.master_url),
                        message=f"XAPI task {task} for {method} did not finish within {timeout:g} s "
                        "and was cancelled",
                    )
                now = time.monotonic()
                interval = min(_TASK_POLL_MAX, max(_TASK_POLL_MIN, (now - started) / _TASK_POLL_LAG))
                time.sleep(interval if deadline is None else min(interval, max(0.0, deadline - now)))
            rec = self.call_xenapi("task.get_record", task)
        except exception.XenAPITaskTimeout:
            raise
        except BaseException:
            self._destroy_task(task)
            raise
        self._destroy_task(task)
        if status == "success":
            return _decode_task_result(rec.get("result", ""))
        info = [str(x) for x in (rec.get("error_info") or [])]
        if status == "cancelled" and not info:
            info = ["TASK_CANCELLED", task]
        if not info:
            info = ["TASK_FAILED", task, status]
        raise exception.XenAPIError(
            info[0], info[1:], method=f"Async.{method}", url=_display_url(self.master_url)
        )

    def _destroy_task(self, task: str) -> None:
        try:
            self.call_xenapi("task.destroy", task)
        except exception.XenAPIError as exc:
            LOG.debug("Destroying task %s failed (ignored): %s", task, exc)

    # ---------------------------------------------------- plug-in check

    def check_plugin_version(self, required: str = REQUIRED_PLUGIN_VERSION) -> str:
        """Refuse to go on unless the managed host's dom0 plug-ins fit.

        The installed version (plug-in ``dom0_plugin_version``, function
        ``get_version``) must have the same major and at least the same
        minor version as ``required``. Returns the installed version.
        """
        host = f"{self.host_address} ({self.host_uuid})"
        try:
            raw = self.call_plugin(VERSION_PLUGIN, "get_version", {})
        except exception.XenAPIError as exc:
            if exc.code == "XENAPI_MISSING_PLUGIN":
                raise exception.XenAPIPluginVersionError(
                    exc.code,
                    [host, "", required],
                    message=(
                        f"The xenapi-driver dom0 plug-ins are not installed on XenServer host {host}: "
                        f"XAPI has no plug-in {VERSION_PLUGIN!r}. Install version {required} with "
                        "'xenapi-driver install-plugins root@<host>'."
                    ),
                ) from None
            raise
        installed = _plain_version(raw)
        try:
            have = _major_minor(installed)
            need = _major_minor(required)
        except ValueError:
            raise exception.XenAPIPluginVersionError(
                "PLUGIN_VERSION_MISMATCH",
                [host, installed, required],
                message=f"dom0 plug-ins on XenServer host {host} report an unreadable version "
                f"{installed!r}; reinstall version {required} with 'xenapi-driver install-plugins'.",
            ) from None
        if have[0] != need[0] or have[1] < need[1]:
            older = have < need
            raise exception.XenAPIPluginVersionError(
                "PLUGIN_VERSION_MISMATCH",
                [host, installed, required],
                message=(
                    f"The dom0 plug-ins on XenServer host {host} are version {installed}, "
                    f"{'older than' if older else 'incompatible with'} the {required} this driver "
                    f"needs. Install the plug-ins shipped with this driver with "
                    "'xenapi-driver install-plugins root@<host>'."
                ),
            )
        LOG.debug("dom0 plug-ins on %s are version %s (need %s)", host, installed, required)
        return installed


# ------------------------------------------------------------------ helpers


def _describe(exc: BaseException) -> str:
    """A short, password-free description of a transport error."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"host name not resolvable ({exc.strerror})"
    if isinstance(exc, xmlrpclib.ProtocolError):
        return f"HTTP error {exc.errcode} {exc.errmsg}"
    if isinstance(exc, xmlrpclib.Fault):
        return f"XML-RPC fault {exc.faultCode}: {exc.faultString}"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if type(exc).__name__ not in text else text


def _decode_task_result(result: Any) -> Any:
    """Decode a task's ``result`` (``<value>...</value>`` XML) to Python."""
    if not isinstance(result, str):
        return result
    text = result.strip()
    if not text:
        return None
    if not text.startswith("<value"):
        return text
    envelope = f"<?xml version='1.0'?><methodResponse><params><param>{text}</param></params></methodResponse>"
    try:
        (value,), _ = xmlrpclib.loads(envelope)
    except Exception:
        return text
    return value


def _plain_version(raw: Any) -> str:
    """The plug-in may answer ``1.2`` or JSON ``"1.2"``."""
    text = str(raw).strip()
    try:
        decoded = json.loads(text)
    except ValueError:
        return text
    return str(decoded) if isinstance(decoded, str | int | float) else text


def _major_minor(version: str) -> tuple[int, int]:
    parts = version.strip().split(".")
    major = int(parts[0])
    minor = int(parts[1]) if len(parts) > 1 else 0
    return major, minor
