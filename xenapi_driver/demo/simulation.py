"""The demo's simulated XenServer hosts: the ``xenapi-simulator`` in a child process.

Why a child process: ``--keep`` must leave the simulator running after the
demo exits, and a child also runs on the second core while Nova runs here.
Everything it writes (dom0 sandboxes with our plug-ins, SRs holding real VHD
files, its log) stays under the demo's temporary directory.

Why two one-host pools: each compute then has its own local EXT SR as its
pool's default SR, so moving a server between them really copies its VHD
chain (resize) or its disks with Storage XenMotion (live migration), exactly
as between two standalone XenServer hosts.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from xenapi_driver.simulator.api import RemoteSimulator

ORIGINATOR = "xenapi-driver-demo"

#: Calls not counted in the timeline: long polls that wait rather than work
#: (the driver's power-state watchers and the demo's own downtime watcher).
UNCOUNTED = ("event.from",)


class DemoSimulator:
    """Start, steer and measure the simulator child."""

    def __init__(self, workdir: Path, hosts: list[int], *, keep: bool) -> None:
        self.workdir = workdir
        self.state_dir = workdir / "simulator"
        self.log_path = workdir / "simulator.log"
        self.sizes = hosts
        self.keep = keep
        self.remote: RemoteSimulator | None = None
        self.proc: subprocess.Popen | None = None

    # -- life cycle ---------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> RemoteSimulator:
        """Spawn ``xenapi-simulator --json`` and wait for its one line of URLs."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "xenapi_driver.simulator.cli", "--json",
            "--hosts", ",".join(str(n) for n in self.sizes), "--state-dir", str(self.state_dir),
            "--host-memory-gib", "16", "--host-cpus", "8",
        ]  # fmt: skip
        log = open(self.log_path, "w", encoding="utf-8")  # noqa: SIM115 - the child owns it
        try:
            self.proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # --keep: not in our process group, so Ctrl-C in this terminal
                # later does not stop the simulator the user asked to keep.
                start_new_session=self.keep,
                env=dict(os.environ),
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self._first_line()
            if line:
                info = json.loads(line)
                self.remote = RemoteSimulator(self.proc, info, None)
                return self.remote
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        tail = self.log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
        self.stop()
        raise RuntimeError(f"the XAPI simulator did not start:\n{tail}")

    def _first_line(self) -> str | None:
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
            for line in text.splitlines():
                if line.startswith("{") and line.endswith("}"):
                    return line
        return None

    def stop(self) -> None:
        """Stop the child (SIGTERM, then SIGKILL) and reap it."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    # -- what the demo needs ------------------------------------------------------------
    @property
    def hosts(self) -> list[Any]:
        """Every simulated host (RemoteHost: name, url, address, uuid, ref, root, local_sr)."""
        assert self.remote is not None
        return [h for p in self.remote.pools for h in p.hosts]

    def session(self, host: Any) -> Any:
        """A logged-in ``XenAPI`` SDK session on ``host``'s pool master."""
        import XenAPI

        assert self.remote is not None
        master = next(p.master for p in self.remote.pools if host in p.hosts)
        session = XenAPI.Session(master.url)
        session.xenapi.login_with_password(self.remote.username, self.remote.password, "1.0", ORIGINATOR)
        return session

    def add_network(self, bridge: str) -> None:
        """The XenServer network behind Neutron's bridge, in every pool (operator setup)."""
        assert self.remote is not None
        for pool in self.remote.pools:
            session = self.session(pool.master)
            try:
                api = session.xenapi
                if not api.network.get_all_records_where(f'field "bridge" = "{bridge}"'):
                    api.network.create(
                        {
                            "name_label": f"network for {bridge}",
                            "name_description": "created by the xenapi-driver demo",
                            "MTU": "1500",
                            "other_config": {},
                            "bridge": bridge,
                            "managed": True,
                            "tags": [],
                        }
                    )
            finally:
                with contextlib.suppress(Exception):
                    session.xenapi.session.logout()

    def call_counts(self) -> Counter[str]:
        """XAPI calls so far, without long polls and the simulator's own control requests."""
        assert self.remote is not None
        counts = self.remote.call_counts
        return Counter(
            {k: v for k, v in counts.items() if k not in UNCOUNTED and "_simulator" not in k and v > 0}
        )

    def sr_bytes(self) -> dict[str, int]:
        """Size of every disk file on every simulated SR (path -> bytes)."""
        sizes: dict[str, int] = {}
        for mount in self.state_dir.glob("hosts/*/dom0/var/run/sr-mount/*"):
            with contextlib.suppress(OSError):
                for entry in os.scandir(mount):
                    if entry.is_file(follow_symlinks=False):
                        sizes[entry.path] = entry.stat(follow_symlinks=False).st_size
        return sizes


def bytes_written(before: dict[str, int], after: dict[str, int]) -> int:
    """Bytes that landed on SRs between two :meth:`DemoSimulator.sr_bytes` samples."""
    return sum(max(0, size - before.get(path, 0)) for path, size in after.items())


class PowerWatcher:
    """Timestamps power-state changes of one instance's VMs, in every pool (``event.from``).

    Why: a resize's downtime is the time between the source VM stopping and
    the destination VM running, which only XAPI sees exactly. One thread per
    pool; :meth:`stop` joins them.
    """

    def __init__(self, sim: DemoSimulator) -> None:
        self.sim = sim
        self.instance_uuid: str | None = None
        self.samples: list[tuple[float, str, str]] = []  # (time, vm uuid, power_state)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        assert self.sim.remote is not None
        for pool in self.sim.remote.pools:
            t = threading.Thread(target=self._run, args=(pool.master,), name="demo-power-watch", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)
        self._threads = [t for t in self._threads if t.is_alive()]

    @property
    def alive(self) -> int:
        return sum(t.is_alive() for t in self._threads)

    def _run(self, master: Any) -> None:
        try:
            session = self.sim.session(master)
        except Exception:  # noqa: BLE001 - no downtime figure rather than no demo
            return
        token = ""
        try:
            while not self._stop.is_set():
                try:
                    result = session.xenapi.event_from(["vm"], token, 1.0)
                except Exception:  # noqa: BLE001 - the simulator is going away
                    return
                token = result["token"]
                now = time.monotonic()
                for event in result.get("events", []):
                    rec = event.get("snapshot") or {}
                    uuid = (rec.get("other_config") or {}).get("nova_uuid")
                    if uuid and uuid == self.instance_uuid and not rec.get("is_a_template"):
                        with self._lock:
                            self.samples.append((now, rec.get("uuid", ""), rec.get("power_state", "")))
        finally:
            with contextlib.suppress(Exception):
                session.xenapi.session.logout()

    def downtime(self, since: float, until: float) -> float | None:
        """Longest time within [since, until] during which none of the instance's VMs ran."""
        with self._lock:
            samples = sorted(s for s in self.samples if s[0] <= until)
        running: dict[str, bool] = {}
        for t, vm, state in samples:
            if t < since:
                running[vm] = state == "Running"
        down_since: float | None = None if any(running.values()) else since
        longest = 0.0
        seen_change = False
        for t, vm, state in samples:
            if t < since:
                continue
            seen_change = True
            running[vm] = state == "Running"
            if any(running.values()):
                if down_since is not None:
                    longest = max(longest, t - down_since)
                    down_since = None
            elif down_since is None:
                down_since = t
        if not seen_change:
            return None
        if down_since is not None:
            longest = max(longest, until - down_since)
        return longest
