"""Simulated pools and hosts: who serves which URL, and where dom0 lives.

Why: XAPI clients deal with pools of hosts, each with its own address, its
own dom0 (plug-ins, ``/var/run/sr-mount``) and the master holding the
database.  A :class:`World` holds every simulated pool (cross-pool
migration needs to find the destination); a :class:`SimPool` owns one
:class:`~xenapi_driver.simulator.db.Database`; a :class:`SimHost` owns an
HTTP server and a dom0 sandbox directory.

Addresses: by default each host gets its own loopback address
(127.0.0.2, 127.0.0.3, ...) and all hosts share one port, so
``HOST_IS_SLAVE [master address]`` works exactly as on a real pool (swap
the address in the URL, keep scheme and port).  ``address_mode="port"``
puts every host on 127.0.0.1 with its own port instead.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import secrets
import shutil
import socket
import threading
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from . import population
from .db import Database
from .faults import Faults
from .schema import Schema, load
from .sessions import SessionTable

if TYPE_CHECKING:  # pragma: no cover
    from .server import HostServer

LOG = logging.getLogger(__name__)

FIRST_ADDRESS = ipaddress.IPv4Address("127.0.0.2")


class SimHost:
    """One simulated host: an HTTP(S) endpoint, a host record, a dom0 sandbox."""

    def __init__(self, pool: SimPool, name: str, address: str, port: int, uuid: str | None = None) -> None:
        self.pool = pool
        self.name = name
        self.address = address
        self.port = port
        self.uuid = uuid or ""
        self.ref = ""
        self.local_sr = ""
        self.sandbox = None  # dom0.Dom0Sandbox when dom0.py is available
        self.server: HostServer | None = None
        self.powered = True
        self.going_down = ""  # "reboot" or "shutdown" between the call and the host going away
        self.shut_down_cleanly = False  # host.shutdown/host.reboot took it down: it boots afresh
        self.epoch = 0  # bumped whenever its server starts or stops (a pending reboot checks it)
        self.root = pool.world.root / "hosts" / name / "dom0"

    def __repr__(self) -> str:
        return f"<SimHost {self.name} {self.url} master={self.is_master}>"

    @property
    def world(self) -> World:
        return self.pool.world

    @property
    def scheme(self) -> str:
        return "https" if self.world.https else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.address}:{self.port}/"

    @property
    def is_master(self) -> bool:
        return self.pool.master is self

    @property
    def master_address(self) -> str:
        """What HOST_IS_SLAVE reports for this host's pool master."""
        master = self.pool.master
        if self.world.address_mode == "port":
            return f"{master.address}:{master.port}"
        return master.address

    def sr_path(self, sr_uuid: str) -> Path:
        """This host's view of ``/var/run/sr-mount/<sr_uuid>``."""
        return self.root / "var" / "run" / "sr-mount" / sr_uuid

    # -- server life cycle ------------------------------------------------------

    def start_server(self) -> None:
        from .server import HostServer

        if self.server is None:
            self.server = HostServer(self)
            self.port = self.server.server_address[1]
        self.server.start()
        self.powered = True
        self.epoch += 1

    def stop_server(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        self.epoch += 1

    def power_off(self) -> None:
        """The host stops answering (connection refused); its records stay."""
        self.stop_server()
        self.powered = False
        population.set_host_live(self.pool, self, False)

    def power_on(self) -> None:
        """The host answers again; after a clean shutdown or reboot it boots afresh (boot hooks)."""
        self.start_server()
        population.set_host_live(self.pool, self, True)
        if self.shut_down_cleanly:
            self.shut_down_cleanly = False
            population.boot_host(self.pool, self)


class SimPool:
    """A pool: hosts, the master, the database, credentials and sessions."""

    def __init__(self, world: World, index: int, username: str, password: str) -> None:
        self.world = world
        self.index = index
        self.name = f"pool{index}"
        self.db = Database(world.schema, name=self.name)
        self.hosts: list[SimHost] = []
        self.master: SimHost | None = None
        self.ref = ""
        self.username = username
        self.password = password
        self.sessions = SessionTable()
        self.dir = world.root / "pools" / self.name
        self.shared_sr_root = self.dir / "shared-sr"
        self.network = ""
        self.iso_sr = ""
        self.default_sr = ""
        self.lock = threading.RLock()

    def __repr__(self) -> str:
        return f"<SimPool {self.name} hosts={len(self.hosts)}>"

    @property
    def url(self) -> str:
        assert self.master is not None
        return self.master.url

    def host_by_ref(self, ref: str) -> SimHost | None:
        for h in self.hosts:
            if h.ref == ref:
                return h
        return None

    def host_by_uuid(self, uuid: str) -> SimHost | None:
        for h in self.hosts:
            if h.uuid == uuid:
                return h
        return None

    def shared_sr_dir(self, sr_uuid: str) -> Path:
        """Create the pool-level directory of a shared SR and link it into every host.

        Each host then sees it at ``/var/run/sr-mount/<sr_uuid>`` in its sandbox.
        """
        target = self.shared_sr_root / sr_uuid
        target.mkdir(parents=True, exist_ok=True)
        for host in self.hosts:
            link_shared_sr(host, target)
        return target

    def add_host(self, name: str | None = None) -> SimHost:
        """Create a new host in this pool (records, dom0 sandbox, HTTP server)."""
        with self.lock:
            address, port = self.world.allocate_address()
            host = SimHost(self, name or f"{self.name}-host{len(self.hosts)}", address, port)
            self.hosts.append(host)
            if self.master is None:
                self.master = host
            host.start_server()
            population.populate_host(self, host)
            for sr_dir in sorted(self.shared_sr_root.glob("*")) if self.shared_sr_root.exists() else ():
                link_shared_sr(host, sr_dir)
            return host

    def restart_toolstack(self) -> None:
        """Every session of the pool becomes invalid; the state survives."""
        from . import sessions

        sessions.invalidate_all(self)

    def stop(self) -> None:
        for h in self.hosts:
            h.stop_server()


def link_shared_sr(host: SimHost, target: Path) -> None:
    link = host.sr_path(target.name)
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        return
    os.symlink(target, link)


class World:
    """Every simulated pool of one simulator, plus shared faults and call counters."""

    def __init__(
        self,
        root: Path,
        *,
        username: str = "root",
        password: str = "xenroot",
        https: bool = False,
        address_mode: str = "ip",
        port: int = 0,
        host_memory: int = 64 * 1024**3,
        host_cpus: int = 8,
        schema: Schema | None = None,
    ) -> None:
        if address_mode not in ("ip", "port"):
            raise ValueError("address_mode must be 'ip' or 'port'")
        from .handlers import load_all

        load_all()
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.iscsi_root = self.root / "iscsi-targets"
        self.schema = schema or load()
        self.username = username
        self.password = password
        self.https = https
        self.address_mode = address_mode
        self.port = port
        self.host_memory = host_memory
        self.host_cpus = host_cpus
        self.reboot_downtime = 0.5  # seconds a rebooting host does not answer
        self.faults = Faults()
        self.stopped = False
        self.control_token = secrets.token_hex(16)
        self.call_counts: Counter[str] = Counter()
        self._count_lock = threading.Lock()
        self.resolve_cache: dict = {}
        self.pools: list[SimPool] = []
        self._next_ip = FIRST_ADDRESS
        self._lock = threading.RLock()
        self.ssl_context = None
        if https:
            from .certs import server_context

            self.ssl_context = server_context(self.root / "tls")

    def count(self, method: str) -> None:
        with self._count_lock:
            self.call_counts[method] += 1

    def add_pool(self, hosts: int = 1) -> SimPool:
        """A new pool with ``hosts`` hosts; the first is the master."""
        if hosts < 1:
            raise ValueError("a pool needs at least one host")
        with self._lock:
            pool = SimPool(self, len(self.pools), self.username, self.password)
            self.pools.append(pool)
            population.populate_pool(pool)
            for _ in range(hosts):
                pool.add_host()
            population.finish_pool(pool)
            return pool

    def all_hosts(self) -> list[SimHost]:
        return [h for p in self.pools for h in p.hosts]

    def host_by_address(self, address: str) -> SimHost | None:
        """The host answering at ``address`` (an IP, ``ip:port`` or a URL)."""
        text = address.strip()
        if "://" in text:
            text = text.split("://", 1)[1]
        text = text.rstrip("/")
        for h in self.all_hosts():
            if text in (h.address, f"{h.address}:{h.port}") and (
                self.address_mode == "ip" or text == f"{h.address}:{h.port}"
            ):
                return h
        return None

    def allocate_address(self) -> tuple[str, int]:
        """A free (address, port) for a new host's server."""
        with self._lock:
            if self.address_mode == "port":
                return "127.0.0.1", 0
            used = {h.address for h in self.all_hosts()}
            ip = self._next_ip
            for _ in range(60000):
                text = str(ip)
                ip = ip + 1
                if ip.packed[-1] in (0, 255):
                    ip = ip + 2
                if text in used:
                    continue
                if self.port == 0:
                    s = socket.socket()
                    try:
                        s.bind((text, 0))
                        self.port = s.getsockname()[1]
                    finally:
                        s.close()
                if _can_bind(text, self.port):
                    self._next_ip = ip
                    return text, self.port
            raise OSError(errno.EADDRNOTAVAIL, "no free loopback address for a simulated host")

    def reset(self) -> None:
        """Back to a freshly started state: same pools, hosts, URLs and credentials."""
        with self._lock:
            self.faults.clear()
            with self._count_lock:
                self.call_counts.clear()
            for pool in self.pools:
                population.reset_pool(pool)

    def stop(self) -> None:
        """Stop every server and wake every blocked event.from so its thread ends."""
        self.stopped = True
        for p in self.pools:
            p.stop()
            with p.db.lock:
                p.db.changed.notify_all()

    def remove_state(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _can_bind(address: str, port: int) -> bool:
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((address, port))
        return True
    except OSError:
        return False
    finally:
        s.close()
