"""XenServer resource pools driven by Nova host aggregates, by reconciliation.

Why reconciliation: Nova 34 no longer calls drivers when an aggregate
changes (``add_to_aggregate`` and friends were removed). So every compute
reads, at ``init_host`` and periodically, the pool aggregates its own host
belongs to (``hypervisor_pool=true``) through Nova's objects, which go
through the conductor, and converges XAPI towards them.

The aggregate's metadata is the shared, operator-visible state. Keys:

``hypervisor_pool``
    ``true`` marks the aggregate as a XenServer pool (set by the operator).
``operational_state``
    ``created`` (set by the operator; also how an operator asks for a retry),
    ``changing`` (a join or eject is under way, or members have not reported
    yet), ``active`` (XAPI matches the aggregate) or ``error``.
``operational_state_reason``
    Present only in ``error``: what went wrong and what to do, in words.
``master_compute``
    The compute service host whose XenServer host is the pool master (the
    aggregate's first host, chosen once).
``xenapi:<compute>:host_uuid`` / ``:address`` / ``:compute_vm``
    What each compute publishes about itself: its XAPI host UUID, its
    host's management address and the UUID of the VM nova-compute runs in
    (the master needs it to shut that VM down cleanly and start it again
    around the join).
``xenapi:joining`` / ``xenapi:join_task``
    The compute being joined and the XAPI task of the ``xenhost.host_join``
    plug-in call, while a join runs. A master compute that restarts
    mid-join finds them and follows the task to its end.

No secret ever goes into this metadata: any admin can read it through the
API. The join uses the master compute's own ``[xenserver]
connection_username`` / ``connection_password`` (from its nova.conf): as
the XenServer pool master's credentials, and to log in to the joining host,
which until the join is a pool of its own that must accept them (after the
join it accepts only the pool's credentials anyway, so every compute of a
pool aggregate has to be configured with them). A joining compute checks,
before it offers its host, that the master accepts the credentials of its
own nova.conf.

The compute VM's UUID is read from ``[xenserver] compute_vm_uuid`` when
that option exists and is set, else from ``/sys/hypervisor/uuid`` inside the
compute VM (Xen exposes the domain's handle there, which XAPI sets to the
VM's UUID).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import ssl
import threading
import time
import urllib.parse
import xmlrpc.client
from typing import Any

import XenAPI

from xenapi_driver import exception, vm_utils
from xenapi_driver.readiness import timing as readiness_timing
from xenapi_driver.readiness.errors import ReadinessTimeout

LOG = logging.getLogger(__name__)

POOL_KEY = "hypervisor_pool"
STATE_KEY = "operational_state"
REASON_KEY = "operational_state_reason"
MASTER_KEY = "master_compute"
JOINING_KEY = "xenapi:joining"
JOIN_TASK_KEY = "xenapi:join_task"

CREATED = "created"
CHANGING = "changing"
ACTIVE = "active"
ERROR = "error"

HOST_UUID = "host_uuid"
ADDRESS = "address"
COMPUTE_VM = "compute_vm"
_MEMBER_FIELDS = (HOST_UUID, ADDRESS, COMPUTE_VM)

#: Seconds between the driver's reconcile runs (Nova 34 has no driver periodic hook).
RECONCILE_INTERVAL = 60.0
#: Where a Xen guest finds its own VM UUID.
HYPERVISOR_UUID_PATH = "/sys/hypervisor/uuid"
#: Metadata values are at most 255 characters (Nova's API schema and DB).
_MAX_VALUE = 255


def _fit(text: str) -> str:
    """``text`` within a metadata value's 255 characters, keeping its start and its advice at the end."""
    if len(text) <= _MAX_VALUE:
        return text
    head, tail = 150, _MAX_VALUE - 150 - 5
    return f"{text[:head]} ... {text[-tail:]}"


def member_key(compute: str, field: str) -> str:
    """The metadata key under which ``compute`` publishes ``field``."""
    return f"xenapi:{compute}:{field}"


def is_pool_aggregate(aggregate: Any) -> bool:
    return str((aggregate.metadata or {}).get(POOL_KEY, "")).strip().lower() == "true"


class PoolError(Exception):
    """A pool operation cannot go on; ``str()`` is the operator-readable reason."""


class _StillJoining(Exception):
    """The join task is still running past our wait; the next run follows it."""


class _Crash(BaseException):
    """Used by tests to simulate the compute process dying at a precise point."""


def find_compute_vm_uuid(conf: Any = None, path: str = HYPERVISOR_UUID_PATH) -> str | None:
    """The UUID of the VM this nova-compute runs in, or None when unknown.

    ``[xenserver] compute_vm_uuid`` wins when the option exists and is set
    (tests, unusual set-ups); else the Xen guest's ``/sys/hypervisor/uuid``.
    """
    if conf is not None:
        group = getattr(conf, "xenserver", None)
        try:
            configured = getattr(group, "compute_vm_uuid", None)
        except Exception:  # noqa: BLE001 - option not registered in this version
            configured = None
        if configured:
            return str(configured).strip()
    try:
        with open(path) as handle:
            value = handle.read().strip()
    except OSError:
        return None
    if not value or value.strip("0-") == "":
        return None  # dom0's own handle is all zeros: not a compute VM
    return value


@dataclasses.dataclass
class _Member:
    compute: str
    host_uuid: str | None
    address: str | None
    compute_vm: str | None


#: Seconds any answer of a joining host's XAPI may take (login, a few record reads).
_REMOTE_TIMEOUT = 30.0


class _TimeoutMixin:
    def __init__(self, timeout: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # type: ignore[call-arg]
        self._timeout = timeout

    def make_connection(self, host):  # type: ignore[no-untyped-def]
        conn = super().make_connection(host)  # type: ignore[misc]
        conn.timeout = self._timeout
        return conn


class _TimeoutTransport(_TimeoutMixin, xmlrpc.client.Transport):
    pass


class _TimeoutSafeTransport(_TimeoutMixin, xmlrpc.client.SafeTransport):
    pass


def remote_session(url: str, conf: Any) -> Any:
    """An SDK session object for another host's XAPI: bounded waits, the configured TLS trust.

    For short conversations with hosts other than this compute's own (a
    joining host, another pool's master); the caller logs in and out.
    """
    opts = conf.xenserver
    timeout = max(float(opts.login_timeout), _REMOTE_TIMEOUT)
    if url.startswith("https:"):
        if opts.insecure:
            context = ssl._create_unverified_context()  # noqa: S323 - the operator's choice
        else:
            context = ssl.create_default_context(cafile=opts.ca_file)
        transport: xmlrpc.client.Transport = _TimeoutSafeTransport(timeout, context=context)
    else:
        transport = _TimeoutTransport(timeout)
    return XenAPI.Session(url, transport=transport)


def _url_with_address(url: str, address: str) -> str:
    """``url`` (scheme, port) pointed at ``address`` instead of its own host."""
    parts = urllib.parse.urlsplit(url)
    host = f"[{address}]" if ":" in address else address
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path or "/", "", ""))


class ResourcePool:
    """Converges XAPI pool membership to this compute's pool aggregates.

    One instance per driver; :meth:`reconcile` is serialised by a lock, so
    the init_host run and the periodic runs never overlap.
    """

    def __init__(
        self,
        session: Any,
        host: str,
        *,
        conf: Any = None,
        compute_vm_uuid: str | None = None,
        join_timeout: float = 600.0,
        use_join_force: bool | None = None,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        if conf is None:
            from xenapi_driver import conf as xconf

            conf = xconf.CONF
        self._session = session
        self._host = host
        self._conf = conf
        self._compute_vm_uuid = compute_vm_uuid
        self._join_timeout = float(join_timeout)
        self._use_join_force = use_join_force
        self._credentials = credentials
        self._lock = threading.Lock()

    # ------------------------------------------------------------ entry

    def reconcile(self, context: Any) -> None:
        """Read this compute's pool aggregates and converge XAPI to them.

        Never raises for a pool problem: the problem is written to the
        aggregate (``error`` with a reason) and logged. Errors reaching Nova
        itself (conductor down) propagate so the caller can log them.
        """
        from nova import objects

        with self._lock:
            aggregates = [
                a
                for a in objects.AggregateList.get_by_host(context, self._host, key=POOL_KEY)
                if is_pool_aggregate(a)
            ]
            if len(aggregates) > 1:
                names = ", ".join(sorted(a.name for a in aggregates))
                for agg in aggregates:
                    if agg.metadata.get(MASTER_KEY) != self._host:
                        self._set_error(
                            agg,
                            f"compute {self._host} is in more than one pool aggregate ({names}); a "
                            "XenServer host can be in one pool only: remove it from all but one",
                        )
                aggregates = [a for a in aggregates if a.metadata.get(MASTER_KEY) == self._host]
            for agg in aggregates:
                try:
                    self._reconcile_one(agg)
                except PoolError as exc:
                    self._set_error(agg, str(exc))
                except exception.XenAPIError as exc:
                    self._set_error(agg, f"XAPI failed on compute {self._host}: {exc}")

    # ------------------------------------------------------------ helpers

    def _meta(self, agg: Any) -> dict[str, str]:
        return dict(agg.metadata or {})

    def _update(self, agg: Any, updates: dict[str, str | None]) -> None:
        current = self._meta(agg)
        changes = {}
        for key, value in updates.items():
            if value is not None:
                value = _fit(str(value))
            if current.get(key) != value:
                changes[key] = value
        if changes:
            agg.update_metadata(changes)

    def _set_state(self, agg: Any, state: str) -> None:
        if self._meta(agg).get(STATE_KEY) != state:
            LOG.info("Pool aggregate %s: operational_state %s", agg.name, state)
        self._update(agg, {STATE_KEY: state, REASON_KEY: None})

    def _set_error(self, agg: Any, reason: str) -> None:
        LOG.error("Pool aggregate %s: %s", agg.name, reason)
        self._update(agg, {STATE_KEY: ERROR, REASON_KEY: reason})

    def _member(self, agg: Any, compute: str) -> _Member:
        meta = self._meta(agg)
        return _Member(
            compute,
            meta.get(member_key(compute, HOST_UUID)),
            meta.get(member_key(compute, ADDRESS)),
            meta.get(member_key(compute, COMPUTE_VM)),
        )

    def _recorded_computes(self, agg: Any) -> set[str]:
        found = set()
        suffix = f":{HOST_UUID}"
        for key in self._meta(agg):
            if key.startswith("xenapi:") and key.endswith(suffix):
                found.add(key[len("xenapi:") : -len(suffix)])
        return found

    def _credentials_pair(self) -> tuple[str, str]:
        if self._credentials is not None:
            return self._credentials
        opts = self._conf.xenserver
        return opts.connection_username, opts.connection_password or ""

    def _remote(self, url: str) -> Any:
        return remote_session(url, self._conf)

    def _join_force(self) -> bool:
        if self._use_join_force is not None:
            return self._use_join_force
        return bool(self._conf.xenserver.use_join_force)

    def _own_compute_vm(self) -> str | None:
        if self._compute_vm_uuid is None:
            self._compute_vm_uuid = find_compute_vm_uuid(self._conf)
        return self._compute_vm_uuid

    def _pool_ref(self) -> tuple[str, dict[str, Any]]:
        pools = self._session.call_xenapi("pool.get_all_records")
        if len(pools) != 1:
            raise PoolError(f"XAPI reports {len(pools)} pool records on compute {self._host}'s host")
        return next(iter(pools.items()))

    def _pool_host_uuids(self) -> dict[str, str]:
        """uuid -> ref of every host in this compute's XAPI pool."""
        return {rec["uuid"]: ref for ref, rec in self._session.call_xenapi("host.get_all_records").items()}

    # ------------------------------------------------------------ one aggregate

    def _reconcile_one(self, agg: Any) -> None:
        meta = self._meta(agg)
        master = meta.get(MASTER_KEY)
        if master is None:
            if meta.get(STATE_KEY, CREATED) == ERROR:
                return
            if agg.hosts and agg.hosts[0] == self._host:
                self._become_master(agg)
                self._run_master(agg)
            else:
                self._publish(agg)
            return
        if master == self._host:
            self._publish(agg, as_master=True)
            self._run_master(agg)
            return
        self._publish(agg)
        if master not in (agg.hosts or []) and meta.get(STATE_KEY) != ERROR:
            raise PoolError(
                f"the pool master's compute {master} is no longer in the aggregate; XenServer cannot "
                "eject a pool master: add it back, or make another host the XAPI master "
                "(xe pool-designate-new-master) and set master_compute to that host's compute"
            )

    def _publish(self, agg: Any, as_master: bool = False) -> None:
        """Tell the master what it needs to join this host (never a secret)."""
        updates: dict[str, str | None] = {
            member_key(self._host, HOST_UUID): self._session.host_uuid,
            member_key(self._host, ADDRESS): self._session.host_address,
        }
        if not as_master:
            vm_uuid = self._own_compute_vm()
            if vm_uuid is None:
                joined = self._session.host_uuid in self._master_pool_uuids(agg)
                if not joined:
                    raise PoolError(
                        f"compute {self._host} cannot find the UUID of the VM it runs in (neither "
                        f"[xenserver] compute_vm_uuid nor {HYPERVISOR_UUID_PATH}); the pool master "
                        "needs it to shut this compute down cleanly for the join"
                    )
            else:
                updates[member_key(self._host, COMPUTE_VM)] = vm_uuid
                self._check_own_credentials(agg)
        self._update(agg, updates)

    def _check_own_credentials(self, agg: Any) -> None:
        """Before offering this host: will this compute's own credentials work after the join?

        After the join this compute logs in through the pool master with the
        ``[xenserver]`` credentials of its own nova.conf; if the master refuses
        them, joining would leave this compute unable to manage its host.
        """
        meta = self._meta(agg)
        master = meta.get(MASTER_KEY)
        address = meta.get(member_key(master, ADDRESS)) if master else None
        if not address or meta.get(STATE_KEY) == ERROR:
            return
        if self._session.host_uuid in self._master_pool_uuids(agg):
            return  # joined already
        user, password = self._credentials_pair()
        remote = self._remote(_url_with_address(self._session.master_url, address))
        try:
            remote.xenapi.login_with_password(user, password, "1.0", "xenapi-driver-pool")
        except XenAPI.Failure as exc:
            code = str(exc.details[0]) if exc.details else "unknown error"
            if code == "HOST_IS_SLAVE":
                return  # the master moved; the master's compute reports that
            raise PoolError(
                f"the pool master {address} refuses the [xenserver] credentials of compute {self._host} "
                f"({code}): after the join it could not manage its host; configure the pool's credentials"
            ) from None
        except OSError as exc:
            raise PoolError(
                f"compute {self._host} cannot reach the pool master's XAPI at {address} "
                f"({exc.__class__.__name__}); after the join it could not manage its host"
            ) from None
        finally:
            with contextlib.suppress(Exception):
                remote.xenapi.session.logout()

    def _master_pool_uuids(self, agg: Any) -> set[str]:
        """Host UUIDs of this compute's XAPI pool, if the pool's master is the aggregate's master."""
        master = self._meta(agg).get(MASTER_KEY)
        if master is None:
            return set()
        master_uuid = self._meta(agg).get(member_key(master, HOST_UUID))
        uuids = self._pool_host_uuids()
        return set(uuids) if master_uuid in uuids else set()

    # ------------------------------------------------------------ master

    def _check_master(self) -> tuple[str, dict[str, Any]]:
        """Preconditions on the master side; nothing is changed."""
        pool_ref, pool = self._pool_ref()
        if pool.get("master") != self._session.host_ref:
            raise PoolError(
                f"compute {self._host}'s host {self._session.host_address} is not the master of its "
                "XAPI pool: the aggregate's first host must be a pool master"
            )
        if pool.get("current_operations"):
            ops = ", ".join(sorted(set(pool["current_operations"].values())))
            raise PoolError(
                f"the XAPI pool of {self._host} is busy with another operation ({ops}); retry later"
            )
        self._check_shared_sr(pool)
        return pool_ref, pool

    def _check_shared_sr(self, pool: dict[str, Any]) -> None:
        wanted = self._conf.xenserver.sr_matching_filter
        kind, _, value = wanted.partition(":")
        sr_ref = None
        if kind == "default-sr" and value.lower() == "true":
            sr_ref = pool.get("default_SR") or vm_utils.NULL_REF
            if sr_ref == vm_utils.NULL_REF:
                sr_ref = None
        elif kind == "other-config" and "=" in value:
            key, _, expected = value.partition("=")
            for ref, rec in self._session.call_xenapi("SR.get_all_records").items():
                if (rec.get("other_config") or {}).get(key) == expected:
                    sr_ref = ref
                    break
        if sr_ref is None:
            raise PoolError(
                f"no SR matches [xenserver] sr_matching_filter = {wanted} on the master "
                f"{self._session.host_address}: a pool needs a shared SR for instance disks"
            )
        rec = self._session.get_rec("SR", sr_ref) or {}
        if not rec.get("shared"):
            raise PoolError(
                f"instance SR {rec.get('name_label')} ({rec.get('uuid')}) of the master "
                f"{self._session.host_address} is not shared (sr_matching_filter = {wanted}); "
                "make a shared NFS or iSCSI SR the pool default: xe pool-param-set default-SR=<uuid>"
            )

    def _become_master(self, agg: Any) -> None:
        pool_ref, _pool = self._check_master()
        self._session.call_xenapi("pool.set_name_label", pool_ref, agg.name)
        self._update(
            agg,
            {
                MASTER_KEY: self._host,
                member_key(self._host, HOST_UUID): self._session.host_uuid,
                member_key(self._host, ADDRESS): self._session.host_address,
                STATE_KEY: CHANGING,
                REASON_KEY: None,
            },
        )
        LOG.info("Compute %s is the master of pool aggregate %s", self._host, agg.name)

    def _run_master(self, agg: Any) -> None:
        meta = self._meta(agg)
        state = meta.get(STATE_KEY, CREATED)
        if meta.get(JOIN_TASK_KEY) or meta.get(JOINING_KEY):
            try:
                self._recover_join(agg)
            except _StillJoining:
                return  # still "changing"; the task is followed again next run
            meta = self._meta(agg)
            state = meta.get(STATE_KEY, CREATED)
        if state == ERROR:
            return  # the operator sets operational_state=created to retry
        pool_ref, pool = self._pool_ref()
        if pool.get("master") != self._session.host_ref:
            raise PoolError(
                f"compute {self._host}'s host {self._session.host_address} is no longer the master of "
                "its XAPI pool; set master_compute to the compute of the new master"
            )
        if pool.get("name_label") != agg.name:
            self._session.call_xenapi("pool.set_name_label", pool_ref, agg.name)
        in_pool = self._pool_host_uuids()
        wanted = [c for c in agg.hosts if c != self._host]
        retrying = state in (CREATED, CHANGING)
        # Ejections first: a host leaving frees nothing the joins need, but
        # doing them first keeps the "removed" intent from waiting on joins.
        for compute in sorted(self._recorded_computes(agg) - set(agg.hosts)):
            member = self._member(agg, compute)
            if member.host_uuid in in_pool and member.host_uuid != self._session.host_uuid:
                self._check_master()  # preconditions only when something is to change
                self._set_state(agg, CHANGING)
                self._eject(agg, member, in_pool[member.host_uuid])
            self._update(agg, {member_key(compute, f): None for f in _MEMBER_FIELDS})
        waiting = []
        for compute in wanted:
            member = self._member(agg, compute)
            if member.host_uuid is None or member.address is None:
                waiting.append(compute)
                continue
            if member.host_uuid in in_pool:
                if retrying:
                    self._ensure_compute_vm_running(member)
                continue
            if member.compute_vm is None:
                waiting.append(compute)
                continue
            self._check_master()
            self._set_state(agg, CHANGING)
            try:
                self._join(agg, member)
            except _StillJoining:
                return
            in_pool = self._pool_host_uuids()
        if waiting:
            LOG.info("Pool aggregate %s: waiting for %s to report", agg.name, ", ".join(waiting))
            self._set_state(agg, CHANGING)
        else:
            self._set_state(agg, ACTIVE)

    # ------------------------------------------------------------ join

    def _check_joiner(self, member: _Member) -> None:
        """Preconditions on the joining host, read with a session of its own; nothing is changed."""
        user, password = self._credentials_pair()
        url = _url_with_address(self._session.master_url, member.address or "")
        remote = self._remote(url)
        try:
            try:
                remote.xenapi.login_with_password(user, password, "1.0", "xenapi-driver-pool")
            except XenAPI.Failure as exc:
                details = [str(d) for d in exc.details]
                if details and details[0] == "HOST_IS_SLAVE":
                    raise PoolError(
                        f"host {member.address} of compute {member.compute} is already a member of "
                        f"another pool (its master is {details[1] if len(details) > 1 else '?'}); "
                        "eject it there first"
                    ) from None
                raise PoolError(
                    f"XAPI on host {member.address} of compute {member.compute} refused the login "
                    f"({details[0] if details else 'unknown error'}); the pool's credentials "
                    "([xenserver] connection_username/connection_password of the master's compute) "
                    "must be valid on every joining host"
                ) from None
            except OSError as exc:
                raise PoolError(
                    f"cannot reach XAPI on host {member.address} of compute {member.compute} "
                    f"({exc.__class__.__name__}: {exc}); nothing was changed"
                ) from None
            try:
                x = remote.xenapi
                hosts = x.host.get_all()
                if len(hosts) != 1:
                    raise PoolError(
                        f"host {member.address} of compute {member.compute} is the master of a pool of "
                        f"{len(hosts)} hosts; only a stand-alone host can join"
                    )
                for pool in x.pool.get_all_records().values():
                    if pool.get("current_operations"):
                        raise PoolError(
                            f"the XAPI pool of compute {member.compute} is busy with another operation; "
                            "retry later"
                        )
                vms = x.VM.get_all_records()
                busy = [
                    rec.get("name_label") or rec.get("uuid")
                    for rec in vms.values()
                    if not rec.get("is_control_domain")
                    and not rec.get("is_a_template")
                    and not rec.get("is_a_snapshot")
                    and rec.get("uuid") != member.compute_vm
                    and rec.get("power_state") in ("Running", "Paused", "Suspended")
                ]
                if busy:
                    raise PoolError(
                        f"host {member.address} of compute {member.compute} runs guests "
                        f"({', '.join(sorted(busy)[:5])}): a joining host must run none but its "
                        "compute VM. Migrate or stop them first"
                    )
                if not any(rec.get("uuid") == member.compute_vm for rec in vms.values()):
                    raise PoolError(
                        f"compute {member.compute} says it runs in VM {member.compute_vm}, which is "
                        f"not on host {member.address}"
                    )
            except XenAPI.Failure as exc:
                raise PoolError(
                    f"checking host {member.address} of compute {member.compute} failed: {exc.details}"
                ) from None
        finally:
            with contextlib.suppress(Exception):
                remote.xenapi.session.logout()

    def _join(self, agg: Any, member: _Member) -> None:
        """Join ``member``'s host through the master's ``xenhost.host_join`` plug-in."""
        self._check_joiner(member)
        user, password = self._credentials_pair()
        args = {
            "url": _url_with_address(self._session.master_url, member.address or ""),
            "user": user,
            "password": password,
            "compute_uuid": member.compute_vm or "",
            "master_addr": self._session.host_address,
            "master_user": user,
            "master_pass": password,
            "force": "true" if self._join_force() else "false",
            "timeout": str(max(1, int(self._join_timeout))),
        }
        LOG.info("Pool aggregate %s: joining %s (%s)", agg.name, member.compute, member.address)
        task = self._session.call_xenapi(
            "Async.host.call_plugin", self._session.host_ref, "xenhost", "host_join", args
        )
        task_uuid = self._session.call_xenapi("task.get_uuid", task)
        self._update(agg, {JOINING_KEY: member.compute, JOIN_TASK_KEY: task_uuid})
        self._after_join_started(agg, member)
        self._finish_join(agg, member, task)

    def _after_join_started(self, agg: Any, member: _Member) -> None:
        """A seam for tests: the compute may "die" here, with the join task running."""

    def _wait_task(self, task: str) -> tuple[str, list[str]]:
        """Wait (bounded) for ``task``; (status, error_info)."""
        deadline = time.monotonic() + self._join_timeout + 60
        interval = 0.05
        while True:
            status = self._session.call_xenapi("task.get_status", task)
            if status not in ("pending", "cancelling"):
                break
            if time.monotonic() >= deadline:
                return "timeout", []
            time.sleep(interval)
            interval = min(interval * 2, 1.0)
        info = [str(x) for x in (self._session.call_xenapi("task.get_error_info", task) or [])]
        with contextlib.suppress(exception.XenAPIError):
            self._session.call_xenapi("task.destroy", task)
        return status, info

    def _finish_join(self, agg: Any, member: _Member, task: str | None) -> None:
        """Judge the join by XAPI's state, whatever the task said; never leave it half done."""
        status, info = self._wait_task(task) if task is not None else ("unknown", [])
        if status == "timeout":
            LOG.warning(
                "Pool aggregate %s: the join of %s has not finished within %g s; checking again on the "
                "next run",
                agg.name,
                member.compute,
                self._join_timeout,
            )
            raise _StillJoining()
        hosts = self._pool_host_uuids()
        joined = member.host_uuid in hosts
        self._update(agg, {JOINING_KEY: None, JOIN_TASK_KEY: None})
        if joined:
            self._wait_until_live(member, hosts[member.host_uuid])
            try:
                self._ensure_compute_vm_running(member)
            except exception.XenAPIError as exc:
                raise PoolError(
                    f"host {member.address} of compute {member.compute} joined the pool, but its "
                    f"nova-compute VM {member.compute_vm} did not start again ({exc}); fix the cause, "
                    "then set operational_state=created to start it"
                ) from None
            LOG.info("Compute %s's host joined pool aggregate %s", member.compute, agg.name)
            return
        # Not joined: XAPI's join is all or nothing, so only the compute VM may be left down.
        why = " ".join(info) if info else status
        restarted = self._restart_joiner_compute(member)
        raise PoolError(
            f"host {member.address} of compute {member.compute} did not join the pool ({why}); it is "
            f"unchanged{'' if restarted else ' but its compute VM could not be started again'}. Fix "
            "the cause, then set operational_state=created to retry"
        )

    def _wait_until_live(self, member: _Member, host_ref: str) -> None:
        """A joined host restarts its toolstack: wait, bounded, until the pool sees it live again.

        The same bounded back-off the SSH readiness checks use
        (:func:`xenapi_driver.readiness.timing.poll_until`), with XAPI's own
        signal (``host_metrics.live``) instead of a status file.
        """

        def live() -> bool:
            try:
                metrics = self._session.call_xenapi("host.get_metrics", host_ref)
                return bool(self._session.call_xenapi("host_metrics.get_live", metrics))
            except exception.XenAPIError:
                return False  # metrics not there yet while the host re-registers

        try:
            readiness_timing.poll_until(
                live,
                timeout=max(1.0, self._join_timeout),
                interval=0.2,
                max_interval=5.0,
                what=f"host {member.address} live in the pool after joining",
            )
        except ReadinessTimeout as exc:
            raise PoolError(
                f"host {member.address} of compute {member.compute} joined the pool but has not come back "
                f"live ({exc}); check the host, then set operational_state=created"
            ) from None

    def _recover_join(self, agg: Any) -> None:
        """A join recorded in the metadata but not followed to its end (compute restarted)."""
        meta = self._meta(agg)
        compute = meta.get(JOINING_KEY)
        task_uuid = meta.get(JOIN_TASK_KEY)
        LOG.warning("Pool aggregate %s: resuming the join of %s after a restart", agg.name, compute)
        task = None
        if task_uuid:
            try:
                task = self._session.call_xenapi("task.get_by_uuid", task_uuid)
            except exception.XenAPIError:
                task = None  # gone (finished long ago, or XAPI restarted)
        if not compute:
            self._update(agg, {JOINING_KEY: None, JOIN_TASK_KEY: None})
            return
        try:
            self._finish_join(agg, self._member(agg, compute), task)
        except PoolError as exc:
            self._set_error(agg, str(exc))

    def _ensure_compute_vm_running(self, member: _Member) -> None:
        if not member.compute_vm:
            return
        try:
            vm = self._session.call_xenapi("VM.get_by_uuid", member.compute_vm)
        except exception.XenAPIError as exc:
            if exc.code == "UUID_INVALID":
                return
            raise
        if self._session.call_xenapi("VM.get_power_state", vm) == "Halted":
            LOG.info("Starting nova-compute VM %s of %s", member.compute_vm, member.compute)
            host = self._session.call_xenapi("host.get_by_uuid", member.host_uuid)
            self._session.call_xenapi("VM.start_on", vm, host, False, False)

    def _restart_joiner_compute(self, member: _Member) -> bool:
        """Start the joining host's compute VM again after a failed join (on its own host)."""
        user, password = self._credentials_pair()
        remote = self._remote(_url_with_address(self._session.master_url, member.address or ""))
        try:
            remote.xenapi.login_with_password(user, password, "1.0", "xenapi-driver-pool")
            vm = remote.xenapi.VM.get_by_uuid(member.compute_vm)
            if remote.xenapi.VM.get_power_state(vm) == "Halted":
                remote.xenapi.VM.start(vm, False, False)
            return True
        except Exception as exc:  # noqa: BLE001 - reported in the reason
            LOG.warning(
                "Could not start compute VM %s of %s again: %s", member.compute_vm, member.compute, exc
            )
            return False
        finally:
            with contextlib.suppress(Exception):
                remote.xenapi.session.logout()

    # ------------------------------------------------------------ eject

    def _eject(self, agg: Any, member: _Member, host_ref: str) -> None:
        """Eject a host removed from the aggregate (XAPI wipes it: its compute VM goes too)."""
        expr = (
            'field "is_a_template" = "false" and field "is_control_domain" = "false" and '
            f'field "resident_on" = "{vm_utils.quote(host_ref)}"'
        )
        resident = self._session.get_all_records_where("VM", expr)
        guests = [r.get("name_label") for r in resident.values() if r.get("uuid") != member.compute_vm]
        if guests:
            raise PoolError(
                f"cannot eject compute {member.compute}'s host {member.address}: it runs guests "
                f"({', '.join(sorted(g or '?' for g in guests)[:5])}); empty it first (host "
                "maintenance mode or live migration), then set operational_state=created"
            )
        for vm_ref, rec in resident.items():
            LOG.info(
                "Shutting down nova-compute VM %s of %s before the eject", rec.get("uuid"), member.compute
            )
            self._session.call_xenapi("VM.clean_shutdown", vm_ref)
        LOG.info("Pool aggregate %s: ejecting %s (%s)", agg.name, member.compute, member.address)
        self._session.call_xenapi("pool.eject", host_ref)


def _maintenance_targets(context: Any, host: str) -> list[str]:
    """The other computes of ``host``'s pool aggregate (where its instances should go)."""
    from nova import objects

    targets: list[str] = []
    for agg in objects.AggregateList.get_by_host(context, host, key=POOL_KEY):
        if is_pool_aggregate(agg):
            targets += [h for h in agg.hosts if h != host and h not in targets]
    return targets


def host_maintenance_mode(
    context: Any, session: Any, host: str, mode: bool, *, compute_api: Any = None
) -> str:
    """Nova's ``host_maintenance_mode`` for a pool member, keeping Nova's records true.

    Entering maintenance disables the XenServer host (XAPI places nothing new
    on it) and asks Nova to live-migrate each running instance of this
    compute to another compute of its pool aggregate (round robin; the
    scheduler still checks each destination), so Nova's instance records,
    migrations and placement allocations follow the VMs. Moving the VMs with
    XAPI alone would leave Nova believing they are still here. Outside a pool
    aggregate the scheduler picks the destinations (Storage XenMotion).
    Returns ``on_maintenance`` / ``off_maintenance`` as Nova's API expects;
    the migrations continue asynchronously.
    """
    from nova.compute import vm_states

    from nova import context as nova_context
    from nova import objects

    if not mode:
        session.call_xenapi("host.enable", session.host_ref)
        return "off_maintenance"
    if compute_api is None:
        from nova.compute import api as nova_compute_api

        compute_api = nova_compute_api.API()
    session.call_xenapi("host.disable", session.host_ref)
    targets = _maintenance_targets(context, host)
    instances = objects.InstanceList.get_by_host(context, host)
    movable = [
        i for i in instances if i.vm_state in (vm_states.ACTIVE, vm_states.PAUSED) and i.task_state is None
    ]
    for n, instance in enumerate(movable):
        target = targets[n % len(targets)] if targets else None
        LOG.info(
            "Maintenance of %s: live-migrating instance %s to %s", host, instance.uuid, target or "any host"
        )
        # On behalf of the instance's owner, as an admin: the migration record and
        # the instance action then carry the owner's project, as API-started ones do.
        owner = nova_context.RequestContext(
            user_id=instance.user_id,
            project_id=instance.project_id,
            is_admin=True,
            roles=["admin"],
            overwrite=False,
        )
        try:
            compute_api.live_migrate(owner, instance, None, None, target, force=False, async_=True)
        except Exception as exc:  # noqa: BLE001 - one refusal must not stop the others
            LOG.error("Maintenance of %s: instance %s cannot be migrated: %s", host, instance.uuid, exc)
    if not movable:
        LOG.info("Maintenance of %s: no running instance to move", host)
    return "on_maintenance"


class ReconcileThread:
    """Runs :meth:`ResourcePool.reconcile` every ``interval`` seconds on a plain thread.

    Nova 34 has no periodic hook for drivers, so the driver owns this timer;
    ``stop`` ends it promptly (cleanup_host).
    """

    def __init__(self, pool: ResourcePool, context_factory: Any, interval: float = 60.0) -> None:
        self._pool = pool
        self._context_factory = context_factory
        self._interval = float(interval)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.runs = 0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="xenapi-pool-reconcile", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._pool.reconcile(self._context_factory())
            except Exception:  # noqa: BLE001 - the next run tries again
                LOG.exception("Reconciling pool aggregates failed")
            self.runs += 1

    def stop(self, timeout: float | None = 5.0) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and timeout:
            thread.join(timeout)
