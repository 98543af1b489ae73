"""``python -m xenapi_driver.demo``: one server's life on XenAPIDriver, through Nova's REST API.

Starts two simulated XenServer hosts (the ``xenapi-simulator`` with our
plug-ins in its dom0 sandboxes), runs Nova in this process with
``compute_driver = xenapi.XenAPIDriver`` on one nova-compute per host, and
through the compute API: boots a server from a small VHD image, snapshots
it to an image, resizes it onto the other host (the VHD chain moves),
confirms, live-migrates it back and deletes it. A step whose driver feature
has not landed is reported as skipped, never imitated. Then it prints a
timeline and proves it left nothing behind (processes, threads, files),
unless ``--keep`` asks it to leave the simulator running.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import signal
import sys
import tarfile
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from xenapi_driver.demo import report
from xenapi_driver.demo.report import FAILED, OK, SKIPPED, StepResult
from xenapi_driver.demo.simulation import bytes_written

MiB = 1024**2
STEP_TIMEOUT = 90.0

DESCRIPTION = """\
Demo: boot, snapshot, resize, live-migrate and delete a server through Nova's REST
API on XenAPIDriver, against two simulated XenServer hosts, then print a timeline.
Everything runs locally (loopback only) in a temporary directory that is removed
at the end."""


def _image_mib(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of MiB: {text!r}") from None
    if not 2 <= value <= 512:
        raise argparse.ArgumentTypeError("give between 2 and 512 MiB (the disk is 1 GiB)")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m xenapi_driver.demo",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--keep",
        action="store_true",
        help="leave the simulator running afterwards and print how to point the XenAPI SDK "
        "or nova.conf at it",
    )
    ap.add_argument(
        "--image-mib",
        type=_image_mib,
        default=8,
        metavar="MIB",
        help="MiB of data in the demo image's VHD chain, in 2 MiB VHD blocks (default: 8)",
    )
    ap.add_argument(
        "--log",
        metavar="FILE",
        help="also write Nova's and the driver's log to FILE (it is shown on failure anyway)",
    )
    return ap.parse_args(argv)


# -- the image ---------------------------------------------------------------------------------


def build_image(workdir: Path, data_mib: int) -> tuple[bytes, int]:
    """A small XenServer-style image: a gzip'd tar of a two-level VHD chain (``0.vhd`` leaf).

    Written with the project's VHD library, as blktap writes VHDs. Returns the
    image bytes and the chain's virtual size.
    """
    from xenapi_driver import vhd

    size = 1024 * MiB  # the virtual disk fits m1.tiny's 1 GiB root disk
    block = vhd.BLOCK_SIZE  # VHDs allocate whole 2 MiB blocks: write whole ones
    blocks = max(2, data_mib * MiB // block)
    base_blocks = max(1, blocks * 3 // 4)
    folder = workdir / "image"
    folder.mkdir()
    base, leaf = folder / "base.vhd", folder / "leaf.vhd"
    vhd.create_dynamic(str(base), size)
    with vhd.open_chain(str(base)) as chain:
        for i in range(base_blocks):
            chain.write(2 * i * block, os.urandom(block))
    vhd.snapshot(str(leaf), str(base))
    with vhd.open_chain(str(leaf)) as chain:
        for i in range(blocks - base_blocks):
            chain.write((2 * i + 1) * block, os.urandom(block))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as archive:
        archive.add(str(leaf), arcname="0.vhd")
        archive.add(str(base), arcname="1.vhd")
    shutil.rmtree(folder)
    return buf.getvalue(), size


# -- steps -------------------------------------------------------------------------------------


def missing_methods(driver: Any, *names: str) -> list[str]:
    """Which of ``names`` the driver does not implement (still Nova's base-class stubs).

    This is how the demo tells a feature that has not landed from one that
    has: a step runs exactly when the driver overrides what it needs.
    """
    from nova.virt import driver as nova_driver

    base = nova_driver.ComputeDriver
    return [n for n in names if getattr(type(driver), n, None) is getattr(base, n, None)]


@dataclass
class Step:
    """One REST-API step of the demo and what it needs from the driver."""

    name: str
    title: str
    run: Callable[[], str | None]
    needs: tuple[str, ...] = ()
    measure_downtime: bool = False
    progress_total: Callable[[], int | None] | None = None
    blocked_by: str | None = None
    #: Checks made after the step was measured (their XAPI calls are not counted).
    verify: Callable[[], str | None] | None = None


class Demo:
    """Sets up the simulated hosts and Nova, runs the steps, keeps their results."""

    def __init__(self, args: argparse.Namespace, out: TextIO) -> None:
        self.args = args
        self.out = out
        self.tty = report.is_tty(out)
        self.results: list[StepResult] = []
        self.sim: Any = None
        self.cloud: Any = None
        self.watcher: Any = None
        self.server: dict[str, Any] | None = None
        self.image_id: str | None = None
        self.image_bytes = 0
        self.snapshot_id: str | None = None
        self.deleted: tuple[str, str] = ("", "")
        self.hosts: list[Any] = []
        self.notes: list[str] = []
        self.failed = False

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    # -- set-up ---------------------------------------------------------------------------
    def start(self, workdir: Path) -> None:
        from xenapi_driver.demo import cloud as cloud_mod

        # First, before anything imports eventlet: Nova runs on native threads.
        cloud_mod.prepare_nova(workdir / "nova-shutdown.log")
        from xenapi_driver.demo.simulation import DemoSimulator, PowerWatcher

        t0 = time.monotonic()
        self.sim = DemoSimulator(workdir, [1, 1], keep=self.args.keep)
        remote = self.sim.start()
        self.hosts = self.sim.hosts
        self.sim.add_network("br-int")  # what Neutron's (fake) ports plug into
        self.say(f"Simulated XenServer hosts ({time.monotonic() - t0:.1f} s), user {remote.username}:")
        for h in self.hosts:
            self.say(f"  {h.name:<12} {h.url:<26} local EXT SR, dom0 with the xenapi-driver plug-ins")

        t0 = time.monotonic()
        self.cloud = cloud_mod.NovaCloud(self.hosts, remote.username, remote.password, workdir)
        self.cloud.start()
        self.say(
            f"Nova 34 in-process ({time.monotonic() - t0:.1f} s): API, conductor, scheduler, placement, "
            f"nova-compute on {', '.join(self.cloud.computes)} with compute_driver = xenapi.XenAPIDriver"
        )
        for driver in self.cloud.drivers():
            self._ensure_image_layer(driver)
        data, virtual = build_image(workdir, self.args.image_mib)
        self.image_bytes = len(data)
        self.image_id = self.cloud.glance.add("demo-vhd-chain", data, "vhd", "ovf")
        self.say(
            f"Image demo-vhd-chain: a two-VHD chain in a tgz ({report.human_bytes(len(data))}, "
            f"virtual {report.human_bytes(virtual)}), in Nova's in-memory Glance"
        )
        self.watcher = PowerWatcher(self.sim)
        self.watcher.start()

    def _ensure_image_layer(self, driver: Any) -> None:
        """Use the driver's image layer; attach the real one if the driver does not wire it yet."""
        from xenapi_driver import vmops

        ops = driver.vmops
        if isinstance(ops.image_source, vmops.NoImageSource):
            from xenapi_driver.image import XenAPIImageSource

            ops.image_source = XenAPIImageSource(driver._session, sr_finder=driver.hostops.instance_sr)
            note = (
                "XenAPIDriver does not wire its image layer yet: the demo attaches "
                "xenapi_driver.image.XenAPIImageSource to it"
            )
            if note not in self.notes:
                self.notes.append(note)

    # -- the steps ------------------------------------------------------------------------
    def steps(self) -> list[Step]:
        a, b = self.hosts[0].name, self.hosts[1].name
        return [
            Step("boot", f"boot on {a} from the VHD image", self.boot, ("spawn",),
                 progress_total=lambda: self.image_bytes),
            Step("snapshot", "snapshot to an image", self.snapshot, ("snapshot",)),
            Step("resize", f"resize to m1.small onto {b}", self.resize,
                 ("migrate_disk_and_power_off", "finish_migration"), measure_downtime=True),
            Step("confirm", "confirm the resize", self.confirm, ("confirm_migration",),
                 blocked_by="resize"),
            Step("live-migrate", "live-migrate", self.live_migrate,
                 ("check_can_live_migrate_destination", "live_migration"), measure_downtime=True),
            Step("delete", "delete the server", self.delete, ("destroy",), verify=self.verify_deleted),
        ]  # fmt: skip

    def boot(self) -> str | None:
        server = self.cloud.api.post_server(
            {
                "server": {
                    "name": "demo-server",
                    "imageRef": self.image_id,
                    "flavorRef": "1",  # m1.tiny
                    "networks": [{"port": self.cloud.case.neutron.port_1["id"]}],
                    "availability_zone": f"nova:{self.hosts[0].name}",
                }
            }
        )
        self.watcher.instance_uuid = server["id"]
        self.server = server  # from here on the server exists: delete removes it whatever happens
        self.server = self.cloud.wait_server(server["id"], STEP_TIMEOUT, status="ACTIVE")
        return f"server {server['id'][:8]} ACTIVE on {self.server['OS-EXT-SRV-ATTR:host']}"

    def snapshot(self) -> str | None:
        from nova.tests.functional.api import client as api_client

        sid = self.server["id"]
        resp = self.cloud.api.post_server_action(sid, {"createImage": {"name": "demo-snapshot"}})
        image_id = (resp or {}).get("image_id")
        if not image_id:
            raise api_client.OpenStackApiException("createImage returned no image id")
        self.snapshot_id = image_id
        deadline = time.monotonic() + STEP_TIMEOUT
        while time.monotonic() < deadline and not self.cloud.stopping.is_set():
            image = self.cloud.glance.image(image_id) or {}
            if image.get("status") == "active" and image_id in self.cloud.glance.uploaded:
                break
            time.sleep(0.2)
        else:
            raise TimeoutError(f"snapshot image {image_id} did not become active (or interrupted)")
        self.server = self.cloud.wait_server(sid, STEP_TIMEOUT, **{"OS-EXT-STS:task_state": None})
        return f"image {image_id[:8]} ({report.human_bytes(self.cloud.glance.uploaded[image_id])})"

    def resize(self) -> str | None:
        sid = self.server["id"]
        self.cloud.api.post_server_action(sid, {"resize": {"flavorRef": "2"}})  # m1.small
        self.server = self.cloud.wait_server(sid, STEP_TIMEOUT, status="VERIFY_RESIZE")
        flavor = self.server["flavor"]["original_name"]
        return f"now on {self.server['OS-EXT-SRV-ATTR:host']}, flavor {flavor}"

    def confirm(self) -> str | None:
        sid = self.server["id"]
        self.cloud.api.post_server_action(sid, {"confirmResize": None})
        self.server = self.cloud.wait_server(sid, STEP_TIMEOUT, status="ACTIVE")
        return None

    def live_migrate(self) -> str | None:
        sid = self.server["id"]
        here = self.server["OS-EXT-SRV-ATTR:host"]
        target = next(h.name for h in self.hosts if h.name != here)
        self.cloud.api.post_server_action(
            sid, {"os-migrateLive": {"host": target, "block_migration": "auto"}}
        )
        self.server = self.cloud.wait_server(
            sid, STEP_TIMEOUT, status="ACTIVE", **{"OS-EXT-SRV-ATTR:host": target}
        )
        return f"{here} -> {target}"

    def delete(self) -> str | None:
        sid = self.server["id"]
        self.deleted = (sid, self.server.get("OS-EXT-SRV-ATTR:instance_name") or "")
        self.cloud.api.delete_server(sid)
        self.cloud.wait_gone(sid, STEP_TIMEOUT)
        self.server = None
        return None

    def verify_deleted(self) -> str | None:
        left = self._xapi_leftovers(*self.deleted)
        if left:
            raise RuntimeError(f"XAPI still has the server's {left}")
        return "no VM or disk of it left on either host"

    def _xapi_leftovers(self, instance_uuid: str, instance_name: str) -> str:
        """What XAPI still holds for the instance (its VMs, or disks named after it)."""
        found = []
        for h in self.hosts:
            session = self.sim.session(h)
            try:
                for rec in session.xenapi.VM.get_all_records().values():
                    if (rec.get("other_config") or {}).get("nova_uuid") == instance_uuid:
                        found.append(f"VM {rec['name_label']} on {h.name}")
                if instance_name:
                    for rec in session.xenapi.VDI.get_all_records().values():
                        if str(rec.get("name_label", "")).startswith(instance_name + " "):
                            found.append(f"VDI {rec['name_label']} on {h.name}")
            finally:
                with contextlib.suppress(Exception):
                    session.xenapi.session.logout()
        return ", ".join(found)

    # -- running a step -------------------------------------------------------------------
    def run_step(self, step: Step) -> StepResult:
        result = StepResult(step.name, step.title)
        missing = sorted({m for d in self.cloud.drivers() for m in missing_methods(d, *step.needs)})
        if step.blocked_by and any(r.name == step.blocked_by and r.status != OK for r in self.results):
            result.status = SKIPPED
            result.note = f"needs the {step.blocked_by} step"
        elif missing:
            result.status = SKIPPED
            result.note = f"not available yet: XenAPIDriver does not implement {', '.join(missing)}"
        elif step.name == "delete" and self.server is None:
            result.status = SKIPPED
            result.note = "no server to delete (the boot step failed)"
        elif step.name != "delete" and self.failed:
            # The server may be in ERROR or mid-operation: only delete still makes sense.
            result.status = SKIPPED
            result.note = "an earlier step failed"
        if result.status == SKIPPED:
            report.print_step(result, self.out)
            return result

        counts0 = self.sim.call_counts()
        sr0 = self.sim.sr_bytes()
        up0 = self.cloud.glance.uploaded_bytes()
        started = time.monotonic()

        def sample() -> tuple[int, int | None]:
            done = bytes_written(sr0, self.sim.sr_bytes()) + self.cloud.glance.uploaded_bytes() - up0
            return done, (step.progress_total() if step.progress_total else None)

        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                outcome["note"] = step.run()
            except BaseException as exc:  # noqa: BLE001 - reported as the step's failure
                outcome["error"] = exc
                outcome["traceback"] = traceback.format_exc()

        worker = threading.Thread(target=work, name=f"demo-step-{step.name}", daemon=True)
        with report.Progress(step.name, step.title, sample, self.out, self.tty):
            worker.start()
            worker.join(STEP_TIMEOUT + 30)
        ended = time.monotonic()
        result.seconds = ended - started
        if worker.is_alive():
            outcome["error"] = TimeoutError(f"{step.name} did not finish within {STEP_TIMEOUT + 30:.0f} s")
        counts = self.sim.call_counts()
        counts.subtract(counts0)
        positive = {k: v for k, v in counts.items() if v > 0}
        result.xapi_calls = sum(positive.values())
        result.top_calls = sorted(positive.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
        result.bytes_copied = sample()[0]
        if step.measure_downtime and "error" not in outcome:
            time.sleep(0.3)  # let the watcher see the last power-state event
            result.downtime = self.watcher.downtime(started, ended)
        if step.verify is not None and "error" not in outcome:
            try:
                outcome["note"] = step.verify()
            except Exception as exc:  # noqa: BLE001 - reported as the step's failure
                outcome["error"] = exc
                outcome["traceback"] = traceback.format_exc()
        if "error" in outcome:
            result.status = FAILED
            result.note = f"{type(outcome['error']).__name__}: {outcome['error']}"
            self.failed = True
            if "traceback" in outcome and self.args.log is None:
                self._failure_details(outcome["traceback"])
        else:
            result.note = outcome.get("note") or ""
        report.print_step(result, self.out)
        return result

    def _failure_details(self, tb: str) -> None:
        self.say(
            "    --- what went wrong (traceback, then the end of Nova's log; --log FILE keeps it all) ---"
        )
        for line in tb.rstrip().splitlines()[-12:]:
            self.say("    " + line)
        for line in self.cloud.log_tail(40).splitlines():
            self.say("    " + line)

    def run(self) -> None:
        self.say("")
        self.say("Through Nova's REST API:")
        for step in self.steps():
            self.results.append(self.run_step(step))
        if self.server is not None:
            # A step failed before delete could run: remove the server so the
            # hosts are left clean, without counting it in the timeline.
            with contextlib.suppress(Exception):
                self.cloud.api.delete_server(self.server["id"])
                self.cloud.wait_gone(self.server["id"], STEP_TIMEOUT)


# -- leftovers --------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                found.append(int(entry))
    return found


def _processes_using(path: Path) -> list[int]:
    """Processes whose command line or working directory mentions ``path``."""
    needle = str(path)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            raw = Path(f"/proc/{entry}/cmdline").read_bytes()
            cmdline = raw.replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(f"/proc/{entry}/cwd")
            if needle in cmdline or cwd.startswith(needle):
                found.append(int(entry))
    return found


def wait_threads(timeout: float) -> list[str]:
    """Threads other than the main one still alive after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        others = [t for t in threading.enumerate() if t is not threading.main_thread() and t.is_alive()]
        if not others or time.monotonic() > deadline:
            return [t.name for t in others]
        time.sleep(0.05)


# -- main -------------------------------------------------------------------------------------


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore Ctrl-C inside the block (only the main thread may change signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def keep_instructions(demo: Demo, workdir: Path) -> str:
    remote = demo.sim.remote
    host = demo.hosts[0]
    lines = [
        "",
        f"The simulator keeps running (pid {demo.sim.pid}); its state is in {workdir}.",
        "Hosts: " + ", ".join(f"{h.name} {h.url}" for h in demo.hosts),
        "",
        "With the XenAPI SDK:",
        "    import XenAPI",
        f"    s = XenAPI.Session({host.url!r})",
        f"    s.xenapi.login_with_password({remote.username!r}, {remote.password!r}, '1.0', 'me')",
        "    print(s.xenapi.host.get_all_records())",
        "",
        "In nova.conf of a nova-compute (one per host):",
        "    [DEFAULT]",
        "    compute_driver = xenapi.XenAPIDriver",
        "    [xenserver]",
        f"    connection_url = {host.url}",
        f"    connection_username = {remote.username}",
        f"    connection_password = {remote.password}",
        "",
        f"Stop it with: kill {demo.sim.pid} && rm -rf {workdir}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    args = parse_args(argv)
    out = out or sys.stdout
    began = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="xenapi-demo-"))
    # Every temporary file of this process and its children goes inside it.
    scratch = workdir / "tmp"
    scratch.mkdir()
    saved_tempdir, saved_env = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir = str(scratch)
    os.environ["TMPDIR"] = str(scratch)

    demo = Demo(args, out)
    demo.say("xenapi-driver demo (working directory " + str(workdir) + ")")
    status = 0
    try:
        try:
            demo.start(workdir)
            demo.run()
        except KeyboardInterrupt:
            demo.say("\ninterrupted: cleaning up (this takes a few seconds)")
            if demo.cloud is not None:
                demo.cloud.stopping.set()  # the running step's waits end now
            status = 130
        except Exception as exc:  # noqa: BLE001 - set-up failures are reported, then cleaned up
            demo.say(f"\nThe demo could not run: {type(exc).__name__}: {exc}")
            if demo.cloud is not None and demo.cloud.case is not None:
                demo.say(demo.cloud.log_tail(40))
            status = 1
        if demo.results:
            report.print_timeline(demo.results, out)
            downtime = next((r.downtime for r in demo.results if r.name == "resize" and r.status == OK), None)
            if downtime is not None:
                demo.say(f"\nResize downtime (source VM stopped -> destination VM running): {downtime:.2f} s")
        if demo.notes:
            demo.say("")
            for note in demo.notes:
                demo.say("Note: " + note)
    except KeyboardInterrupt:
        status = 130
    # Cleaning up must not be cut short by a second Ctrl-C: a half-stopped Nova
    # would leave threads that keep the process from exiting.
    with _sigint_ignored():
        if demo.watcher is not None:
            demo.watcher.stop()
        if demo.cloud is not None:
            demo.cloud.stopping.set()
            demo.cloud.stop()
            if args.log:
                Path(args.log).write_text(demo.cloud.log_text(), encoding="utf-8")
        tempfile.tempdir = saved_tempdir
        if saved_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved_env

        if args.keep and demo.sim is not None and demo.sim.remote is not None and status == 0:
            demo.say(keep_instructions(demo, workdir))
            return 1 if demo.failed else 0
        return _finish(demo, workdir, status, began)


def _finish(demo: Demo, workdir: Path, status: int, began: float) -> int:
    """Stop the simulator, remove the working directory and prove nothing is left."""
    if demo.sim is not None:
        demo.sim.stop()
    shutil.rmtree(workdir, ignore_errors=True)
    threads = wait_threads(10.0)
    procs = sorted(set(_children(os.getpid())) | set(_processes_using(workdir)))
    problems = []
    if threads:
        problems.append(f"threads still running: {', '.join(threads)}")
    if procs:
        problems.append(f"processes left: {procs}")
    if workdir.exists():
        problems.append(f"{workdir} could not be removed")
    if problems:
        demo.say("\nLeft behind: " + "; ".join(problems))
        status = status or 1
    else:
        stopped = "simulator stopped, " if demo.sim is not None and demo.sim.remote is not None else ""
        demo.say(f"\nCleaned up: {stopped}no process or thread left, working directory removed.")
    if demo.failed:
        status = status or 1
    demo.say(f"Finished in {time.monotonic() - began:.1f} s.")
    return status


if __name__ == "__main__":
    sys.exit(main())
