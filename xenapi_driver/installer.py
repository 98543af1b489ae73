"""Install the dom0 plug-ins on XenServer / XCP-ng hosts over SSH (paramiko SFTP).

Why: the driver refuses hosts whose plug-ins have the wrong version, so
operators need one idempotent command that puts the plug-ins in
``/etc/xapi.d/plugins`` with their run bits, lays out ``/images`` and
``/boot/guest`` as the deployment guide asks (symlinks into the local SR),
sets up root SSH trust between the dom0s of a deployment (migration copies
disks dom0 to dom0 with rsync over SSH), and then checks through XAPI that
the host runs the version this driver expects.

Host keys are checked against known_hosts (never accepted blindly); every
failure says what went wrong and what to do. ``target_root`` installs below
a directory instead of "/" (used by tests against a loopback sshd).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import posixpath
import re
import shlex
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

LOG = logging.getLogger(__name__)

PLUGIN_DIR = "/etc/xapi.d/plugins"
SR_MOUNT_BASE = "/var/run/sr-mount"
IMAGES_LINK = "/images"
KERNELS_LINK = "/boot/guest"
LOCAL_SR_NAME = "Local storage"
ORIGINATOR = "xenapi-driver-installer"


class InstallerError(Exception):
    """An installation step failed; the message says why and what to do."""


@dataclass
class Target:
    """``[user@]host[:port]`` as given on the command line."""

    host: str
    user: str = "root"
    port: int = 22

    @classmethod
    def parse(cls, text: str, default_port: int = 22) -> Target:
        user, _, rest = text.rpartition("@")
        host, port = rest, default_port
        if rest.startswith("["):  # [v6]:port
            match = re.match(r"^\[([^\]]+)\](?::(\d+))?$", rest)
            if not match:
                raise InstallerError(f"cannot parse host {text!r}")
            host, port = match.group(1), int(match.group(2) or default_port)
        elif rest.count(":") == 1:
            host, port_text = rest.split(":")
            if not port_text.isdigit():
                raise InstallerError(f"bad port in {text!r}")
            port = int(port_text)
        if not host or host.startswith("-") or any(c.isspace() for c in host):
            raise InstallerError(f"{text!r} is not a host")
        return cls(host=host, user=user or "root", port=port)

    def __str__(self) -> str:
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{shown}" + (f":{self.port}" if self.port != 22 else "")

    @property
    def known_hosts_name(self) -> str:
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


@dataclass
class Options:
    identity: str | None = None
    known_hosts: str | None = None
    target_root: str = "/"
    dry_run: bool = False
    trust: bool = True
    timeout: float = 15.0
    xapi_url: str | None = None
    xapi_username: str = "root"
    xapi_password: str | None = field(default=None, repr=False)


def plugin_source_dir() -> Path:
    """Our plug-in files (source tree or installed data files)."""
    from xenapi_driver.simulator.dom0 import plugins_source_dir

    return plugins_source_dir()


def plugin_version(source: Path | None = None) -> str:
    """The version the shipped plug-ins report (``PLUGIN_VERSION`` in dom0_utils.py)."""
    text = ((source or plugin_source_dir()) / "dom0_utils.py").read_text(encoding="utf-8")
    match = re.search(r'^PLUGIN_VERSION = "([^"]+)"', text, re.M)
    if not match:
        raise InstallerError("dom0_utils.py does not define PLUGIN_VERSION")
    return match.group(1)


def _plugin_files(source: Path) -> list[Path]:
    from xenapi_driver.simulator.dom0 import plugin_files

    return plugin_files(source)


class HostInstaller:
    """Installs on one host through an open paramiko connection."""

    def __init__(self, target: Target, options: Options, say: Callable[[str], None]) -> None:
        self.target = target
        self.options = options
        self._say = say
        self.client = None
        self.sftp = None
        self.host_key: str | None = None  # "type base64"
        self.management_address: str | None = None
        self.changes = 0

    # --------------------------------------------------------------- output
    def say(self, message: str) -> None:
        self._say(f"[{self.target}] {message}")

    def change(self, message: str) -> None:
        self.changes += 1
        self.say(("would " if self.options.dry_run else "") + message)

    def remote(self, dom0_path: str) -> str:
        """The remote path of a dom0 path (below ``target_root`` when given)."""
        root = self.options.target_root.format(host=self.target.host, port=self.target.port)
        if root in ("", "/"):
            return dom0_path
        return posixpath.join(root, dom0_path.lstrip("/"))

    # ----------------------------------------------------------- connection
    def connect(self) -> None:
        import paramiko

        target, options = self.target, self.options
        client = paramiko.SSHClient()
        known_hosts = options.known_hosts or os.path.expanduser("~/.ssh/known_hosts")
        if options.known_hosts and not os.path.exists(known_hosts):
            raise InstallerError(f"known_hosts file {known_hosts} does not exist")
        if os.path.exists(known_hosts):
            client.load_host_keys(known_hosts)
        if not options.known_hosts:
            try:
                client.load_system_host_keys()
            except OSError:
                pass
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(
                target.host,
                port=target.port,
                username=target.user,
                key_filename=options.identity,
                look_for_keys=options.identity is None,
                allow_agent=options.identity is None,
                timeout=options.timeout,
                banner_timeout=options.timeout,
                auth_timeout=options.timeout,
            )
        except paramiko.BadHostKeyException as exc:
            raise InstallerError(
                f"{target}: the host key changed (got {exc.key.get_name()} "
                f"{exc.key.fingerprint}); if the host was reinstalled, remove its old entry from "
                f"{known_hosts} (ssh-keygen -R '{target.known_hosts_name}') and add the new one after "
                "checking its fingerprint on the host's console"
            ) from None
        except paramiko.AuthenticationException:
            raise InstallerError(
                f"{target}: the SSH key was refused by {target.user}@{target.host}; install the public key "
                f"of {options.identity or 'your default identity'} in its authorized_keys"
            ) from None
        except paramiko.SSHException as exc:
            if "known_hosts" in str(exc):
                raise InstallerError(
                    f"{target}: host key unknown (not in {known_hosts}); verify the host's fingerprint, then "
                    f"add it, e.g. ssh-keyscan -p {target.port} {target.host} >> {known_hosts}"
                ) from None
            raise InstallerError(f"{target}: SSH failed: {exc}") from None
        except TimeoutError:
            raise InstallerError(
                f"{target}: unreachable (no answer on port {target.port} within {options.timeout:g}s)"
            ) from None
        except OSError as exc:
            reason = exc.strerror or str(exc)
            if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
                reason = "connection refused"
            raise InstallerError(f"{target}: unreachable on port {target.port} ({reason})") from None
        self.client = client
        key = client.get_transport().get_remote_server_key()
        self.host_key = f"{key.get_name()} {key.get_base64()}"
        self.sftp = client.open_sftp()

    def close(self) -> None:
        for handle in (self.sftp, self.client):
            if handle is not None:
                try:
                    handle.close()
                except Exception:  # noqa: BLE001 - closing is best effort
                    pass

    def run(self, command: str, *, check: bool = True) -> tuple[int, str, str]:
        """Run a command on the host (through its login shell, as ssh does)."""
        channel = self.client.get_transport().open_session()
        channel.settimeout(max(self.options.timeout, 30.0))
        try:
            channel.exec_command(command)
            stdout = channel.makefile("rb").read().decode("utf-8", "replace")
            stderr = channel.makefile_stderr("rb").read().decode("utf-8", "replace")
            status = channel.recv_exit_status()
        except TimeoutError:
            raise InstallerError(f"{self.target}: command timed out: {command}") from None
        finally:
            channel.close()
        if check and status != 0:
            raise InstallerError(
                f"{self.target}: '{command}' failed ({status}): {(stderr or stdout).strip()}"
            )
        return status, stdout, stderr

    # --------------------------------------------------------------- checks
    def _lstat(self, path: str):
        try:
            return self.sftp.lstat(path)
        except OSError:
            return None

    def check_dom0(self) -> str:
        """Refuse anything that is not a XAPI dom0; returns the local SR's UUID."""
        if self._lstat(self.remote("/etc/xensource-inventory")) is None:
            raise InstallerError(
                f"{self.target}: not a XAPI dom0 (no /etc/xensource-inventory); install on the XenServer / "
                "XCP-ng host itself, not on a VM or the compute node"
            )
        status, out, err = self.run(
            f"xe sr-list name-label={shlex.quote(LOCAL_SR_NAME)} --minimal", check=False
        )
        if status == 127 or "not found" in err:
            raise InstallerError(f"{self.target}: not a XAPI dom0 (the 'xe' command is missing)")
        if status != 0:
            raise InstallerError(f"{self.target}: 'xe sr-list' failed ({status}): {(err or out).strip()}")
        uuids = [u for u in out.strip().split(",") if u]
        if not uuids:
            raise InstallerError(
                f"{self.target}: no SR named '{LOCAL_SR_NAME}'; /images and /boot/guest must live in the "
                "local SR (see the deployment guide)"
            )
        if not re.match(r"^[0-9a-f-]{36}$", uuids[0]):
            raise InstallerError(f"{self.target}: unexpected 'xe sr-list' output {out.strip()!r}")
        self.management_address = self._management_address()
        return uuids[0]

    def _management_address(self) -> str | None:
        """The address XAPI gives this host (what migration will ssh to), if xe can say."""
        try:
            with self.sftp.open(self.remote("/etc/xensource-inventory"), "r") as handle:
                inventory = handle.read().decode("utf-8", "replace")
        except OSError:
            return None
        match = re.search(r"^INSTALLATION_UUID=['\"]?([0-9a-f-]{36})", inventory, re.M)
        if not match:
            return None
        status, out, _ = self.run(f"xe host-param-get uuid={match.group(1)} param-name=address", check=False)
        address = out.strip()
        if status != 0 or not re.match(r"^[0-9A-Za-z.:-]{1,253}$", address):
            return None
        return address

    @property
    def known_hosts_line(self) -> str:
        """This host's key under the name we reached it by and its XAPI management address."""
        names = [self.target.known_hosts_name]
        if self.management_address and self.management_address != self.target.host:
            address = self.management_address
            names.append(address if self.target.port == 22 else f"[{address}]:{self.target.port}")
        return f"{','.join(names)} {self.host_key}"

    # ---------------------------------------------------------------- steps
    def _mkdirs(self, path: str, mode: int = 0o755) -> None:
        missing = []
        current = path
        while current not in ("", "/") and self._lstat(current) is None:
            missing.append(current)
            current = posixpath.dirname(current)
        for directory in reversed(missing):
            self.change(f"create directory {directory}")
            if not self.options.dry_run:
                self.sftp.mkdir(directory, mode)

    def _remote_digest(self, path: str) -> str | None:
        try:
            with self.sftp.open(path, "rb") as handle:
                return hashlib.sha256(handle.read()).hexdigest()
        except OSError:
            return None

    def install_files(self, source: Path) -> None:
        directory = self.remote(PLUGIN_DIR)
        self._mkdirs(directory)
        for path in _plugin_files(source):
            data = path.read_bytes()
            target = posixpath.join(directory, path.name)
            mode = 0o644 if path.name.endswith(".py") else 0o755
            existing = self._lstat(target)
            if existing is not None and self._remote_digest(target) == hashlib.sha256(data).hexdigest():
                if stat.S_IMODE(existing.st_mode) != mode:
                    self.change(f"set mode {mode:o} on {target}")
                    if not self.options.dry_run:
                        self.sftp.chmod(target, mode)
                continue
            self.change(f"{'update' if existing else 'install'} {target}")
            if self.options.dry_run:
                continue
            partial = posixpath.join(directory, f".{path.name}.partial")
            self.sftp.putfo(io.BytesIO(data), partial)
            self.sftp.chmod(partial, mode)
            self.sftp.posix_rename(partial, target)

    def _link(self, link_dom0: str, target_dom0: str) -> None:
        """``link`` -> ``target`` (dom0 paths); relative below a target root so it stays inside it."""
        link = self.remote(link_dom0)
        if self.remote("/") == "/":
            wanted = target_dom0
        else:
            wanted = posixpath.relpath(target_dom0, posixpath.dirname(link_dom0))
        info = self._lstat(link)
        if info is not None and stat.S_ISLNK(info.st_mode):
            current = self.sftp.readlink(link)
            if current == wanted:
                return
            self.change(f"re-point {link_dom0} from {current} to {target_dom0}")
            if not self.options.dry_run:
                self.sftp.remove(link)
        elif info is not None and stat.S_ISDIR(info.st_mode):
            if self.sftp.listdir(link):
                raise InstallerError(
                    f"{self.target}: {link_dom0} is a non-empty directory; move its contents to "
                    f"{target_dom0} and remove it, then run again"
                )
            self.change(f"replace empty directory {link_dom0} with a symlink to {target_dom0}")
            if not self.options.dry_run:
                self.sftp.rmdir(link)
        elif info is not None:
            raise InstallerError(f"{self.target}: {link_dom0} exists and is not a directory or symlink")
        else:
            self.change(f"link {link_dom0} -> {target_dom0}")
        if not self.options.dry_run:
            self._mkdirs(posixpath.dirname(link))
            self.sftp.symlink(wanted, link)

    def prepare_layout(self, sr_uuid: str) -> None:
        sr = f"{SR_MOUNT_BASE}/{sr_uuid}"
        if self._lstat(self.remote(sr)) is None:
            raise InstallerError(f"{self.target}: the local SR {sr_uuid} is not mounted at {sr}")
        for name in ("os-images", "os-guest-kernels"):
            self._mkdirs(self.remote(f"{sr}/{name}"))
        self._link(IMAGES_LINK, f"{sr}/os-images")
        self._link(KERNELS_LINK, f"{sr}/os-guest-kernels")

    def root_public_key(self) -> str:
        """dom0 root's public key (created with ssh-keygen when missing)."""
        key = self.remote("/root/.ssh/id_ed25519")
        for candidate in (key, self.remote("/root/.ssh/id_rsa")):
            try:
                with self.sftp.open(candidate + ".pub", "r") as handle:
                    return " ".join(handle.read().decode().split()[:2])
            except OSError:
                continue
        self.change("create root's SSH key /root/.ssh/id_ed25519")
        if self.options.dry_run:
            return ""
        self._mkdirs(self.remote("/root/.ssh"), 0o700)
        self.run(f"ssh-keygen -q -t ed25519 -N '' -C root@dom0 -f {shlex.quote(key)}")
        with self.sftp.open(key + ".pub", "r") as handle:
            return " ".join(handle.read().decode().split()[:2])

    def ensure_line(self, dom0_path: str, line: str, what: str) -> None:
        path = self.remote(dom0_path)
        try:
            with self.sftp.open(path, "r") as handle:
                existing = handle.read().decode()
        except OSError:
            existing = ""
        if line in existing.splitlines():
            return
        self.change(f"add {what} to {dom0_path}")
        if self.options.dry_run:
            return
        self._mkdirs(posixpath.dirname(path), 0o700)
        content = existing + ("" if not existing or existing.endswith("\n") else "\n") + line + "\n"
        partial = path + ".partial"
        self.sftp.putfo(io.BytesIO(content.encode()), partial)
        self.sftp.chmod(partial, 0o600)
        self.sftp.posix_rename(partial, path)


def establish_trust(installers: list[HostInstaller]) -> None:
    """Every dom0's root may ssh to every other (keys and host keys), for migration."""
    keys = {id(i): i.root_public_key() for i in installers}
    for source in installers:
        for destination in installers:
            if source is destination:
                continue
            if keys[id(source)]:
                destination.ensure_line(
                    "/root/.ssh/authorized_keys",
                    f"{keys[id(source)]} root@{source.target.host}",
                    f"{source.target.host}'s root key",
                )
            source.ensure_line(
                "/root/.ssh/known_hosts",
                destination.known_hosts_line,
                f"{destination.target.host}'s host key",
            )


def verify_version(
    targets: Iterable[Target], options: Options, expected: str, say: Callable[[str], None]
) -> None:
    """Ask XAPI to run dom0_plugin_version.get_version on each host and compare."""
    import XenAPI

    session = XenAPI.Session(options.xapi_url)
    try:
        session.xenapi.login_with_password(
            options.xapi_username, options.xapi_password or "", "1.0", ORIGINATOR
        )
    except XenAPI.Failure as exc:
        raise InstallerError(f"XAPI at {options.xapi_url} refused the login: {exc.details[0]}") from None
    except OSError as exc:
        raise InstallerError(f"XAPI at {options.xapi_url} is unreachable: {exc}") from None
    try:
        records = session.xenapi.host.get_all_records()
        for target in targets:
            matches = [
                ref for ref, rec in records.items() if target.host in (rec["address"], rec["hostname"])
            ]
            if not matches and len(records) == 1:
                matches = list(records)
            if not matches:
                raise InstallerError(f"{target}: no host with that address in the pool at {options.xapi_url}")
            try:
                got = session.xenapi.host.call_plugin(matches[0], "dom0_plugin_version", "get_version", {})
            except XenAPI.Failure as exc:
                raise InstallerError(
                    f"{target}: XAPI could not run the version plug-in: {exc.details}"
                ) from None
            if got.strip().strip('"') != expected:
                raise InstallerError(f"{target}: XAPI reports plug-in version {got!r}, expected {expected}")
            say(f"[{target}] XAPI reports plug-in version {got} (as expected)")
    finally:
        try:
            session.xenapi.session.logout()
        except Exception:  # noqa: BLE001
            pass


def install(targets: list[Target], options: Options, say: Callable[[str], None] = print) -> int:
    """Install on every target; returns the number of changes made (or planned, for a dry run)."""
    source = plugin_source_dir()
    expected = plugin_version(source)
    installers = [HostInstaller(t, options, say) for t in targets]
    try:
        for installer in installers:
            installer.connect()
            sr_uuid = installer.check_dom0()
            installer.say(f"XAPI dom0 with local SR {sr_uuid}")
            installer.install_files(source)
            installer.prepare_layout(sr_uuid)
        if options.trust and len(installers) > 1:
            establish_trust(installers)
        for installer in installers:
            if installer.changes == 0:
                installer.say(f"up to date (plug-ins version {expected})")
            elif not options.dry_run:
                installer.say(f"installed plug-ins version {expected} ({installer.changes} changes)")
    finally:
        for installer in installers:
            installer.close()
    if options.xapi_url and not options.dry_run:
        verify_version(targets, options, expected, say)
    return sum(i.changes for i in installers)
