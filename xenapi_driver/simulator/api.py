"""Public Python API of the XAPI simulator.

Why: tests, benchmarks and the demo start pools of simulated XenServer
hosts, talk to them with the real ``XenAPI`` SDK, and steer them: reset,
inject faults, restart the toolstack, power hosts off, count calls.

In-process (threads)::

    from xenapi_driver.simulator import api
    with api.start(hosts=3) as sim:
        s = XenAPI.Session(sim.url)
        s.xenapi.login_with_password(sim.username, sim.password, "1.0", "me")
        sim.faults.fail_next("VM.start", "HOST_NOT_ENOUGH_FREE_MEMORY", "1024", "0")

As a subprocess (``subprocess=True``) the same methods work through a
control endpoint on the master; ``pools[i].hosts[j]`` then carry only the
URL, address, port, uuid and ref of each host.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess as _subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .world import SimHost, SimPool, World

__all__ = ["Simulator", "RemoteSimulator", "start", "SimPool", "SimHost", "World"]

DEFAULT_USERNAME = "root"
DEFAULT_PASSWORD = "xenroot"


class Simulator:
    """A running in-process simulator (one :class:`World`)."""

    def __init__(self, world: World, *, own_state: bool = False) -> None:
        self.world = world
        self._own_state = own_state
        self._stopped = False

    # -- discovery ---------------------------------------------------------------------
    @property
    def pools(self) -> list[SimPool]:
        return self.world.pools

    @property
    def pool(self) -> SimPool:
        return self.world.pools[0]

    @property
    def url(self) -> str:
        """URL of the first pool's master."""
        return self.pool.url

    @property
    def username(self) -> str:
        return self.world.username

    @property
    def password(self) -> str:
        return self.world.password

    @property
    def state_dir(self) -> Path:
        return self.world.root

    # -- steering ---------------------------------------------------------------------
    @property
    def faults(self):
        """:class:`~xenapi_driver.simulator.faults.Faults`: fail_next, add_latency, drop_connections."""
        return self.world.faults

    @property
    def call_counts(self) -> Counter[str]:
        """Calls per canonical method name (``VM.get_record``, ``Async.VM.start``, ``GET /path``)."""
        return self.world.call_counts

    def reset_call_counts(self) -> None:
        self.world.call_counts.clear()

    def reset(self) -> None:
        """Back to the freshly started state (same URLs and credentials; sessions invalid)."""
        self.world.reset()

    def restart_toolstack(self, pool: int | SimPool | None = None) -> None:
        """Every session (of one pool, or of all) becomes invalid; state survives."""
        for p in self._pools(pool):
            p.restart_toolstack()

    def power_off_host(self, host: SimHost | str) -> None:
        """The host stops answering (connection refused); ``host_metrics.live`` goes false."""
        self._host(host).power_off()

    def power_on_host(self, host: SimHost | str) -> None:
        self._host(host).power_on()

    def add_pool(self, hosts: int = 1) -> SimPool:
        return self.world.add_pool(hosts)

    # -- guest agents and storage targets (for tests and demos) ----------------------------
    def agents_for(self, host: SimHost | str):
        """The :class:`~xenapi_driver.simulator.guest_agent.GuestAgents` of a host.

        ``.enabled`` switches every agent of the host; ``.state(domid)`` shows what
        a guest's agent negotiated and received (password, resetnetwork calls ...).
        """
        from .handlers import xenstore

        return xenstore.agents_for(self._host(host))

    def set_agent_enabled(self, host: SimHost | str, enabled: bool) -> None:
        """Switch the guest agents of a host on or off (off: requests go unanswered)."""
        from .handlers import xenstore

        xenstore.set_agent_enabled(self._host(host), enabled)

    def create_lun(self, target_iqn: str, lun: int, size: int) -> str:
        """Add a LUN of ``size`` bytes to the simulated iSCSI target ``target_iqn``; return its SCSI id.

        Every pool of this simulator sees the target (``SR.introduce`` with
        ``device_config`` ``targetIQN`` and ``SCSIid``, then ``PBD.plug``).
        """
        from . import sr_backend

        return sr_backend.create_lun(self.world.iscsi_root, target_iqn, int(lun), int(size))

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.world.stop()
        if self._own_state:
            shutil.rmtree(self.world.root, ignore_errors=True)

    def __enter__(self) -> Simulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- helpers ------------------------------------------------------------------------
    def _pools(self, pool: int | SimPool | None) -> list[SimPool]:
        if pool is None:
            return list(self.world.pools)
        if isinstance(pool, int):
            return [self.world.pools[pool]]
        return [pool]

    def _host(self, host: SimHost | str) -> SimHost:
        if isinstance(host, SimHost):
            return host
        for h in self.world.all_hosts():
            if host in (h.ref, h.uuid, h.name, h.url, h.address):
                return h
        raise KeyError(f"no simulated host {host!r}")

    def describe(self) -> dict:
        """URLs and credentials as plain data (what the console script prints)."""
        return {
            "username": self.username,
            "password": self.password,
            "state_dir": str(self.world.root),
            "pools": [
                {
                    "name": p.name,
                    "ref": p.ref,
                    "master": p.master.url if p.master else None,
                    "hosts": [
                        {
                            "name": h.name,
                            "url": h.url,
                            "address": h.address,
                            "port": h.port,
                            "uuid": h.uuid,
                            "ref": h.ref,
                            "root": str(h.root),
                            "local_sr": h.local_sr,
                            "master": h.is_master,
                        }
                        for h in p.hosts
                    ],
                }
                for p in self.world.pools
            ],
        }


def start(
    hosts: int = 3,
    pools: int = 1,
    *,
    state_dir: str | Path | None = None,
    username: str = DEFAULT_USERNAME,
    password: str = DEFAULT_PASSWORD,
    https: bool = False,
    address_mode: str = "ip",
    port: int = 0,
    host_memory: int = 64 * 1024**3,
    host_cpus: int = 8,
    subprocess: bool = False,
    timeout: float = 60.0,
) -> Simulator | RemoteSimulator:
    """Start ``pools`` pools of ``hosts`` hosts each and return the running simulator.

    ``hosts`` may also be a list giving the size of each pool.  Without
    ``state_dir`` a temporary directory is used and removed by ``stop()``.
    """
    sizes = list(hosts) if isinstance(hosts, (list, tuple)) else [int(hosts)] * int(pools)
    if subprocess:
        return RemoteSimulator.spawn(
            sizes,
            state_dir=state_dir,
            username=username,
            password=password,
            https=https,
            address_mode=address_mode,
            timeout=timeout,
            extra=["--port", str(port), "--host-memory-gib", str(max(1, host_memory // 1024**3)),
                   "--host-cpus", str(host_cpus)],
        )  # fmt: skip
    own = state_dir is None
    root = Path(tempfile.mkdtemp(prefix="xapi-sim-")) if own else Path(state_dir)
    world = World(
        root,
        username=username,
        password=password,
        https=https,
        address_mode=address_mode,
        port=port,
        host_memory=host_memory,
        host_cpus=host_cpus,
    )
    try:
        for n in sizes:
            world.add_pool(n)
    except BaseException:
        world.stop()
        if own:
            shutil.rmtree(root, ignore_errors=True)
        raise
    return Simulator(world, own_state=own)


# -- subprocess mode ---------------------------------------------------------------------------


@dataclass
class RemoteHost:
    name: str
    url: str
    address: str
    port: int
    uuid: str
    ref: str
    root: Path
    local_sr: str
    is_master: bool


@dataclass
class RemotePool:
    name: str
    ref: str
    hosts: list[RemoteHost] = field(default_factory=list)

    @property
    def master(self) -> RemoteHost:
        return next(h for h in self.hosts if h.is_master)

    @property
    def url(self) -> str:
        return self.master.url


class _RemoteFaults:
    def __init__(self, sim: RemoteSimulator) -> None:
        self._sim = sim

    def fail_next(self, method: str, code: str, *params: object, count: int = 1) -> None:
        self._sim._control(
            "fail_next", method=method, code=code, params=[str(p) for p in params], count=count
        )

    def add_latency(self, seconds: float) -> None:
        self._sim._control("latency", seconds=seconds)

    def drop_connections(self, count: int = 1, method: str = "*") -> None:
        self._sim._control("drop", count=count, method=method)

    def clear(self) -> None:
        self._sim._control("clear_faults")


class RemoteSimulator:
    """A simulator running in a child process (``xenapi-simulator --json``)."""

    def __init__(self, proc: _subprocess.Popen, info: dict, own_state: Path | None) -> None:
        self.proc = proc
        self.info = info
        self._own_state = own_state
        self.username = info["username"]
        self.password = info["password"]
        self.control_url = info["control"]
        self.control_token = info["control_token"]
        self.pools = [
            RemotePool(
                p["name"],
                p["ref"],
                [
                    RemoteHost(
                        h["name"], h["url"], h["address"], h["port"], h["uuid"], h["ref"],
                        Path(h["root"]), h["local_sr"], h["master"],
                    )
                    for h in p["hosts"]
                ],
            )
            for p in info["pools"]
        ]  # fmt: skip
        self.faults = _RemoteFaults(self)

    @classmethod
    def spawn(
        cls, sizes: list[int], *, state_dir, username, password, https, address_mode, timeout, extra=()
    ):
        own = None
        if state_dir is None:
            own = Path(tempfile.mkdtemp(prefix="xapi-sim-"))
            state_dir = own
        cmd = [
            sys.executable, "-m", "xenapi_driver.simulator.cli", "--json",
            "--hosts", ",".join(str(n) for n in sizes), "--state-dir", str(state_dir),
            "--username", username, "--address-mode", address_mode,
        ]  # fmt: skip
        if https:
            cmd.append("--https")
        cmd.extend(extra)
        env = dict(os.environ, XAPI_SIM_PASSWORD=password)
        proc = _subprocess.Popen(cmd, stdout=_subprocess.PIPE, stdin=_subprocess.DEVNULL, env=env, text=True)
        line = _readline_with_timeout(proc, timeout)
        if not line:
            proc.kill()
            proc.wait(timeout=10)
            raise RuntimeError(f"simulator subprocess exited without starting (code {proc.returncode})")
        return cls(proc, json.loads(line), own)

    @property
    def pool(self) -> RemotePool:
        return self.pools[0]

    @property
    def url(self) -> str:
        return self.pools[0].url

    def _control(self, op: str, **args: object) -> object:
        body = json.dumps({"op": op, "token": self.control_token, **args}).encode()
        req = urllib.request.Request(self.control_url, data=body, method="POST")
        req.add_header("Content-Type", "application/json")
        import ssl

        ctx = ssl._create_unverified_context()  # noqa: S323 - loopback, self-signed
        with urllib.request.urlopen(req, timeout=30, context=ctx) as resp:  # noqa: S310
            out = json.loads(resp.read())
        if not out.get("ok"):
            raise RuntimeError(out.get("error", "control request failed"))
        return out.get("value")

    @property
    def call_counts(self) -> Counter[str]:
        return Counter(self._control("call_counts"))

    def reset_call_counts(self) -> None:
        self._control("reset_call_counts")

    def reset(self) -> None:
        self._control("reset")

    def restart_toolstack(self, pool: int | None = None) -> None:
        self._control("restart_toolstack", pool=pool)

    def power_off_host(self, host: RemoteHost | str) -> None:
        self._control("power_off", host=host.uuid if isinstance(host, RemoteHost) else host)

    def power_on_host(self, host: RemoteHost | str) -> None:
        self._control("power_on", host=host.uuid if isinstance(host, RemoteHost) else host)

    def set_agent_enabled(self, host: RemoteHost | str, enabled: bool) -> None:
        self._control(
            "agent_enabled", host=host.uuid if isinstance(host, RemoteHost) else host, enabled=bool(enabled)
        )

    def create_lun(self, target_iqn: str, lun: int, size: int) -> str:
        return str(self._control("create_lun", target_iqn=target_iqn, lun=int(lun), size=int(size)))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except _subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc.stdout:
            self.proc.stdout.close()
        if self._own_state:
            shutil.rmtree(self._own_state, ignore_errors=True)

    def __enter__(self) -> RemoteSimulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _readline_with_timeout(proc: _subprocess.Popen, timeout: float) -> str:
    result: list[str] = []

    def reader() -> None:
        assert proc.stdout is not None
        result.append(proc.stdout.readline())

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    deadline = time.monotonic() + timeout
    while t.is_alive() and time.monotonic() < deadline:
        t.join(0.1)
        if proc.poll() is not None and not t.is_alive():
            break
    return result[0] if result else ""
