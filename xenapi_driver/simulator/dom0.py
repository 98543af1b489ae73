"""Simulated dom0s: a file-system sandbox per host and XAPI's plug-in runner.

Why: the driver's host-side work (copying VHD chains, Glance transfers, guest
agent exchanges) runs as dom0 plug-ins. To prove them, each simulated host gets
a directory laid out as a XenServer dom0 (``etc/xapi.d/plugins``,
``var/run/sr-mount/<sr>``, ``/images`` and ``/boot/guest`` symlinked into the
local SR, ``bin/`` with ``vhd-util`` and the ``xenstore-*`` tools, ``lib/``
with a ``XenAPIPlugin`` module) and :meth:`Dom0Sandbox.call_plugin` runs the
plug-in *file* as a process exactly as XAPI does: argv[1] is an XML-RPC
methodCall ``fn(session_ref, args)`` and stdout is parsed as the reply.

The plug-ins know about the sandbox only through ``XENAPI_DRIVER_DOM0_ROOT``
(read once in ``dom0_utils.py``). Everything else that differs between a real
dom0 and a sandbox is handled here:

* commands resolve through ``PATH`` (``<root>/bin`` first);
* ``ssh`` between simulated dom0s: each sandbox has a root key pair and an
  OpenSSH client configuration ``root/.ssh/config`` (which the migration
  plug-in passes to ``ssh -F`` when the file exists, as it would on a real
  dom0). Its ``Host <address>`` entries give the destination's port, identity
  and ``known_hosts``. The destination runs its own ``sshd`` (see
  :meth:`Dom0Sandbox.start_sshd`) whose ``authorized_keys`` forces
  ``bin/dom0-ssh-command``: it maps the dom0 paths of the remote command
  (``/images/...``, ``/var/run/sr-mount/...``) onto the destination's root,
  so the remote ``rsync`` writes into the right sandbox.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import xmlrpc.client
from dataclasses import dataclass, field
from pathlib import Path

import xenapi_driver
from xenapi_driver.simulator.errors import XapiError

SSHD_BINARY = "/usr/sbin/sshd"
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
DOM0_PYTHON_ENV = "XENAPI_DRIVER_DOM0_PYTHON"
# dom0 paths whose remote use (rsync over ssh) is mapped into a sandbox.
MAPPED_PREFIXES = ("/images", "/var/run/sr-mount", "/boot/guest", "/etc/xapi.d", "/var/log")
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def plugins_source_dir() -> Path:
    """Where our plug-in files are: the source tree, or the installed data files."""
    override = os.environ.get("XENAPI_DRIVER_PLUGINS_DIR")
    candidates = [Path(override)] if override else []
    candidates.append(Path(xenapi_driver.__file__).resolve().parents[1] / "plugins" / "xapi.d" / "plugins")
    candidates.append(Path(sys.prefix) / "share" / "xenapi-driver" / "plugins")
    for candidate in candidates:
        if (candidate / "dom0_plugin_version").is_file():
            return candidate
    raise FileNotFoundError(f"dom0 plug-ins not found in any of {[str(c) for c in candidates]}")


def plugin_files(source: Path | None = None) -> list[Path]:
    """The files to install in /etc/xapi.d/plugins (plug-ins and their helper modules)."""
    source = source or plugins_source_dir()
    return sorted(
        p
        for p in source.iterdir()
        if p.is_file() and not p.name.endswith((".pyc", "~")) and not p.name.startswith(".")
    )


def is_plugin_executable(path: Path) -> bool:
    """Plug-ins are the files without a ``.py`` extension; helper modules are imported."""
    return not path.name.endswith(".py")


_DOM0_PYTHON: str | None = None


def dom0_python() -> str:
    """The interpreter that plays dom0's ``python3``: Python 3.6 when this machine has one.

    Running the plug-ins under the same minor version as XenServer 8's dom0
    catches syntax and library use newer than 3.6. ``XENAPI_DRIVER_DOM0_PYTHON``
    overrides; otherwise ``python3.6`` on PATH or under pyenv, else this
    interpreter's base (not the virtualenv: plug-ins get the standard library only).
    """
    global _DOM0_PYTHON
    if _DOM0_PYTHON is not None:
        return _DOM0_PYTHON
    candidates = []
    if os.environ.get(DOM0_PYTHON_ENV):
        candidates.append(os.environ[DOM0_PYTHON_ENV])
    which = shutil.which("python3.6")
    if which:
        candidates.append(which)
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.6*/bin/python3.6")))
    candidates += sorted(glob.glob("/root/.pyenv/versions/3.6*/bin/python3.6"))
    for candidate in candidates:
        try:
            out = subprocess.run(
                [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True,
                timeout=20,
                text=True,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.strip():
            _DOM0_PYTHON = candidate
            return candidate
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    _DOM0_PYTHON = str(base) if base.exists() else sys.executable
    return _DOM0_PYTHON


# ----------------------------------------------------------------- file templates

_XENAPIPLUGIN = '''\
"""XenAPIPlugin for a simulated dom0 (what dom0's site-packages provides on a real host).

Same dispatch convention as XAPI's module: argv[1] is an XML-RPC methodCall
fn(session_ref, args); the reply is printed as an XML-RPC methodResponse.
"""
import json
import os
import sys
import urllib.parse
import xmlrpc.client

import XenAPI


class Failure(Exception):
    """A plug-in's own XAPI-style failure: ErrorDescription = [code] + params."""

    def __init__(self, code, params):
        Exception.__init__(self)
        if not isinstance(params, list):
            raise TypeError("Failure params must be a list of strings")
        self.params = [code] + [str(p) for p in params]

    def __str__(self):
        return str(self.params)


class ArgumentError(Exception):
    pass


def success_message(result):
    return xmlrpc.client.dumps(({"Status": "Success", "Value": result},), None, True)


def failure_message(description):
    return xmlrpc.client.dumps(({"Status": "Failure", "ErrorDescription": description},), None, True)


class _LocalSession(XenAPI.Session):
    """The host's XAPI, as dom0's local socket gives it: a pool member forwards to its master."""

    def __init__(self, url, session_ref):
        # dom0's local socket has no TLS: do not verify the simulator's certificate either.
        XenAPI.Session.__init__(self, url, ignore_ssl=url.startswith("https:"))
        self._url = url
        self._session = session_ref
        self._master = None

    def xenapi_request(self, methodname, params):
        if self._master is not None:
            return self._master.xenapi_request(methodname, params)
        try:
            return XenAPI.Session.xenapi_request(self, methodname, params)
        except XenAPI.Failure as exc:
            if not exc.details or exc.details[0] != "HOST_IS_SLAVE" or len(exc.details) < 2:
                raise
            parts = urllib.parse.urlsplit(self._url)
            master = exc.details[1]
            if ":" not in master and parts.port:
                master = "%s:%d" % (master, parts.port)
            master_url = urllib.parse.urlunsplit((parts.scheme, master, "/", "", ""))
            self._master = XenAPI.Session(master_url, ignore_ssl=parts.scheme == "https")
            self._master._session = self._session
            return self._master.xenapi_request(methodname, params)


def _local_session(session_ref):
    root = os.environ.get("XENAPI_DRIVER_DOM0_ROOT", "/")
    with open(os.path.join(root, "etc", "xapi-sim.json")) as handle:
        url = json.load(handle)["xapi_url"]
    return _LocalSession(url, session_ref)


def dispatch(fn_table):
    if len(sys.argv) != 2:
        raise ArgumentError("expected one XML-RPC methodCall argument, got %d" % (len(sys.argv) - 1))
    params, methodname = xmlrpc.client.loads(sys.argv[1])
    session_id, args = params[0], params[1]
    if methodname not in fn_table:
        print(failure_message(["UNKNOWN_XENAPI_PLUGIN_FUNCTION", methodname]))
        return
    session = _local_session(session_id)
    try:
        result = fn_table[methodname](session, args)
        print(success_message(result))
    except SystemExit:
        raise
    except Failure as exc:
        print(failure_message(exc.params))
    except Exception as exc:  # XAPI's convention: any other exception is a plug-in failure
        print(failure_message(["XENAPI_PLUGIN_FAILURE", methodname, exc.__class__.__name__, str(exc)]))
'''

_VHD_UTIL = '''\
#!{python}
"""vhd-util for a simulated dom0: xenapi-driver's compatible implementation."""
import sys
sys.path.insert(0, {srcdir!r})
from xenapi_driver.vhd.cli import main
sys.exit(main())
'''

_XENSTORE = '''\
#!{python}
"""xenstore-read/-write/-rm/-ls/-list/-exists for a simulated dom0.

Talks to the host's XenStore through the simulator's endpoint; same argument
conventions, output and exit codes as the real tools for what plug-ins use.
"""
import json
import os
import ssl
import sys
import urllib.request

URL = {url!r} + "/_simulator/xenstore"
# dom0 reaches its own xenstored locally: no certificate to check.
CONTEXT = ssl._create_unverified_context() if URL.startswith("https:") else None
TOOL = os.path.basename(sys.argv[0])


def call(op, path, value=None):
    body = {{"op": op, "path": path}}
    if value is not None:
        body["value"] = value
    request = urllib.request.Request(
        URL, data=json.dumps(body).encode(), headers={{"Content-Type": "application/json"}}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30, context=CONTEXT) as response:
            reply = json.loads(response.read().decode())
    except OSError as exc:
        sys.stderr.write("%s: could not connect to xenstored: %s\\n" % (TOOL, exc))
        sys.exit(1)
    if not reply.get("ok"):
        raise LookupError(reply.get("error", "error"))
    return reply.get("value")


def fail(message):
    sys.stderr.write("%s: %s\\n" % (TOOL, message))
    sys.exit(1)


def main(argv):
    if not argv:
        fail("usage: %s path [value]..." % TOOL)
    try:
        if TOOL == "xenstore-read":
            for path in argv:
                try:
                    print(call("read", path))
                except LookupError:
                    fail("couldn't read path %s" % path)
        elif TOOL == "xenstore-write":
            if len(argv) % 2:
                fail("usage: xenstore-write path value [path value]...")
            for path, value in zip(argv[0::2], argv[1::2]):
                call("write", path, value)
        elif TOOL == "xenstore-rm":
            for path in argv:
                try:
                    call("rm", path)
                except LookupError:
                    fail("could not remove path %s" % path)
        elif TOOL == "xenstore-exists":
            for path in argv:
                if not call("exists", path):
                    sys.exit(1)
        elif TOOL == "xenstore-list":
            for path in argv:
                try:
                    for name in call("ls", path):
                        print(name)
                except LookupError:
                    fail("couldn't list path %s" % path)
        elif TOOL == "xenstore-ls":
            path = argv[-1]
            try:
                entries = call("list", path)
            except LookupError:
                fail("couldn't list path %s" % path)
            base = path.rstrip("/")
            for full in sorted(entries):
                if full == base:
                    continue
                relative = full[len(base) + 1:]
                depth = relative.count("/")
                print("%s%s = \\"%s\\"" % (" " * depth, relative.split("/")[-1], entries[full]))
        else:
            fail("unknown xenstore tool")
    except LookupError as exc:
        fail(str(exc))


main(sys.argv[1:])
'''

_SSH_COMMAND = '''\
#!{python}
"""Forced command for ssh logins into a simulated dom0 (authorized_keys command=).

Runs the client's command with this dom0's root: absolute dom0 paths in the
arguments (e.g. rsync's destination /images/...) are mapped into the sandbox.
"""
import os
import shlex
import sys

ROOT = {root!r}
PREFIXES = {prefixes!r}


def mapped(arg):
    for prefix in PREFIXES:
        if arg == prefix or arg.startswith(prefix + "/"):
            return ROOT + arg
    return arg


command = os.environ.get("SSH_ORIGINAL_COMMAND", "")
if not command:
    sys.stderr.write("this simulated dom0 accepts commands only, not interactive logins\\n")
    sys.exit(1)
argv = [mapped(arg) for arg in shlex.split(command)]
env = dict(os.environ)
env["XENAPI_DRIVER_DOM0_ROOT"] = ROOT
env["PATH"] = ROOT + "/bin:" + env.get("PATH", {system_path!r})
os.chdir(ROOT)
os.execvpe(argv[0], argv, env)
'''


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    os.chmod(path, mode)


def _symlink(link: Path, target: str) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink():
        if os.readlink(link) == target:
            return
        link.unlink()
    elif link.exists():
        if link.is_dir() and not any(link.iterdir()):
            link.rmdir()
        else:
            return  # something real is there: keep it
    link.symlink_to(target)


def _keygen(path: Path, comment: str) -> None:
    if path.exists() and path.with_name(path.name + ".pub").exists():
        return
    for stale in (path, path.with_name(path.name + ".pub")):
        if stale.exists():
            stale.unlink()
    subprocess.run(
        [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
    )
    os.chmod(path, 0o600)


def _free_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


@dataclass
class SandboxSSHD:
    """A simulated dom0's own sshd (OpenSSH) on a loopback address."""

    sandbox: Dom0Sandbox
    address: str
    port: int
    process: subprocess.Popen
    log_path: Path

    @property
    def host_public_key(self) -> str:
        text = (self.sandbox.root / "etc/ssh/ssh_host_ed25519_key.pub").read_text()
        return " ".join(text.split()[:2])

    @property
    def known_hosts_name(self) -> str:
        return self.address if self.port == 22 else f"[{self.address}]:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, 9)
            except ProcessLookupError:
                pass
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass


@dataclass
class Dom0Sandbox:
    """One simulated host's dom0 file system and plug-in runner (INTERFACES §4)."""

    root: Path
    host_uuid: str
    xapi_url: str
    local_sr_uuid: str
    _sshd: SandboxSSHD | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # ------------------------------------------------------------- layout
    @property
    def plugins_dir(self) -> Path:
        return self.root / "etc" / "xapi.d" / "plugins"

    @property
    def bin_dir(self) -> Path:
        return self.root / "bin"

    def path(self, dom0_path: str) -> Path:
        """The sandbox file for a real dom0 absolute path."""
        if not dom0_path.startswith("/"):
            raise ValueError(f"not an absolute dom0 path: {dom0_path!r}")
        return self.root / dom0_path.lstrip("/")

    def sr_path(self, sr_uuid: str | None = None) -> Path:
        return self.path(f"/var/run/sr-mount/{sr_uuid or self.local_sr_uuid}")

    def env(self) -> dict[str, str]:
        """The environment XAPI gives a plug-in process in this dom0."""
        return {
            "PATH": f"{self.bin_dir}:{SYSTEM_PATH}",
            "PYTHONPATH": str(self.root / "lib"),
            "PYTHONDONTWRITEBYTECODE": "1",
            "XENAPI_DRIVER_DOM0_ROOT": str(self.root),
            "HOME": str(self.root / "root"),
            "LANG": "C.UTF-8",
        }

    # ------------------------------------------------------------ plug-ins
    def call_plugin(
        self,
        plugin: str,
        fn: str,
        args: dict[str, str],
        session_ref: str,
        *,
        timeout: float | None = None,
    ) -> str:
        """Run ``plugin``'s ``fn`` as XAPI's host.call_plugin does and return its string result.

        Raises XapiError: XENAPI_MISSING_PLUGIN [name]; XENAPI_PLUGIN_FAILURE
        ["non-zero exit", stdout, stderr] / ["fault", code, reason]; or the
        plug-in's own failure verbatim.
        """
        path = self.plugins_dir / plugin
        if not plugin or "/" in plugin or plugin.startswith(".") or not path.is_file():
            raise XapiError("XENAPI_MISSING_PLUGIN", plugin)
        request = xmlrpc.client.dumps((session_ref, dict(args)), methodname=fn, allow_none=False)
        try:
            proc = subprocess.Popen(
                [str(path), request],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self.env(),
                cwd=str(self.root),
            )
        except OSError as exc:
            raise XapiError("XENAPI_PLUGIN_FAILURE", "exec failed", "", str(exc)) from exc
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            # As XAPI stops a plug-in: SIGTERM (its clean-up runs), then SIGKILL.
            proc.terminate()
            try:
                out, _ = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
            raise XapiError(
                "XENAPI_PLUGIN_FAILURE", "timeout", _text(out), f"plug-in ran longer than {timeout}s"
            ) from None
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        stdout, stderr = _text(out), _text(err)
        if proc.returncode != 0:
            raise XapiError("XENAPI_PLUGIN_FAILURE", "non-zero exit", stdout, stderr)
        try:
            (value,), _ = xmlrpc.client.loads(stdout)
        except xmlrpc.client.Fault as fault:
            raise XapiError(
                "XENAPI_PLUGIN_FAILURE", "fault", str(fault.faultCode), fault.faultString
            ) from None
        except Exception as exc:
            raise XapiError("XENAPI_PLUGIN_FAILURE", "unparseable output", stdout, stderr) from exc
        if isinstance(value, dict) and value.get("Status") == "Failure":
            description = [str(p) for p in value.get("ErrorDescription") or ["INTERNAL_ERROR"]]
            raise XapiError(description[0], *description[1:])
        if isinstance(value, dict) and value.get("Status") == "Success":
            value = value.get("Value", "")
        if not isinstance(value, str):
            raise XapiError("XENAPI_PLUGIN_FAILURE", "non-string result", stdout, stderr)
        return value

    def install_plugins(self) -> None:
        """(Re)copy our plug-ins into etc/xapi.d/plugins with XAPI's run bits."""
        self.plugins_dir.mkdir(parents=True, exist_ok=True)
        for source in plugin_files():
            target = self.plugins_dir / source.name
            data = source.read_bytes()
            if not target.exists() or target.read_bytes() != data:
                tmp = target.with_name("." + target.name + ".tmp")
                tmp.write_bytes(data)
                os.replace(tmp, target)
            os.chmod(target, 0o755 if is_plugin_executable(source) else 0o644)

    # --------------------------------------------------------------- ssh
    @property
    def ssh_dir(self) -> Path:
        return self.root / "root" / ".ssh"

    @property
    def root_public_key(self) -> str:
        return " ".join((self.ssh_dir / "id_ed25519.pub").read_text().split()[:2])

    def start_sshd(self, address: str = "127.0.0.1", port: int | None = None, timeout: float = 15.0):
        """Start this dom0's sshd (real OpenSSH) on ``address``; idempotent."""
        with self._lock:
            if self._sshd is not None and self._sshd.process.poll() is None:
                return self._sshd
            host_key = self.root / "etc" / "ssh" / "ssh_host_ed25519_key"
            host_key.parent.mkdir(parents=True, exist_ok=True)
            _keygen(host_key, f"dom0-{self.host_uuid}")
            port = port or _free_port(address)
            sftp = next(
                (
                    p
                    for p in ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server")
                    if Path(p).exists()
                ),
                None,
            )
            config = self.root / "etc" / "ssh" / "sshd_config"
            lines = [
                f"Port {port}",
                f"ListenAddress {address}",
                f"HostKey {host_key}",
                "PidFile none",
                f"AuthorizedKeysFile {self.ssh_dir / 'authorized_keys'}",
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "PrintMotd no",
                "UseDNS no",
                "MaxStartups 50",
                "LogLevel VERBOSE",
                # sshd runs commands through root's shell; bash sources ~/.bashrc for
                # top-level ssh commands (SHLVL < 2). A dom0 sandbox must not depend on
                # the machine's root profile (e.g. a pyenv init that can block on a lock).
                "SetEnv SHLVL=1",
            ]
            if sftp:
                lines.append(f"Subsystem sftp {sftp}")
            _write(config, "\n".join(lines) + "\n")
            (self.ssh_dir / "authorized_keys").touch()
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
            log_path = self.root / "var" / "log" / "sshd.log"
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "ab") as log:
                process = subprocess.Popen(
                    [SSHD_BINARY, "-D", "-e", "-f", str(config)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            deadline = time.monotonic() + timeout
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"sshd for {self.root} exited at start:\n{log_path.read_text()}")
                try:
                    with socket.create_connection((address, port), timeout=1.0) as sock:
                        if sock.recv(64).startswith(b"SSH-"):
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    process.kill()
                    raise RuntimeError(f"sshd for {self.root} did not answer:\n{log_path.read_text()}")
                time.sleep(0.05)
            self._sshd = SandboxSSHD(self, address, port, process, log_path)
            return self._sshd

    def stop_sshd(self) -> None:
        with self._lock:
            if self._sshd is not None:
                self._sshd.stop()
                self._sshd = None

    def trust(self, destination: Dom0Sandbox) -> None:
        """Let this dom0's root ssh to ``destination``'s dom0 (root SSH trust for migration).

        The destination must have started its sshd. Adds our key to its
        authorized_keys (forced through its dom0-ssh-command), its host key to
        our known_hosts, and a ``Host <address>`` entry to our root/.ssh/config.
        """
        sshd = destination._sshd
        if sshd is None:
            raise RuntimeError("start the destination's sshd before trusting it")
        options = (
            f'command="{destination.bin_dir / "dom0-ssh-command"}",'
            "no-port-forwarding,no-agent-forwarding,no-X11-forwarding,no-pty"
        )
        _add_line(
            destination.ssh_dir / "authorized_keys", f"{options} {self.root_public_key} dom0-{self.host_uuid}"
        )
        _add_line(self.ssh_dir / "known_hosts", f"{sshd.known_hosts_name} {sshd.host_public_key}")
        hosts_file = self.ssh_dir / "hosts.json"
        hosts = json.loads(hosts_file.read_text()) if hosts_file.exists() else {}
        hosts[sshd.address] = sshd.port
        _write(hosts_file, json.dumps(hosts, sort_keys=True))
        self._write_ssh_config(hosts)

    def _write_ssh_config(self, hosts: dict[str, int]) -> None:
        lines = []
        for address, port in sorted(hosts.items()):
            lines += [f"Host {address}", f"    Port {port}", ""]
        lines += [
            "Host *",
            "    User root",
            f"    IdentityFile {self.ssh_dir / 'id_ed25519'}",
            "    IdentitiesOnly yes",
            f"    UserKnownHostsFile {self.ssh_dir / 'known_hosts'}",
            "    GlobalKnownHostsFile /dev/null",
            "    StrictHostKeyChecking yes",
            "    BatchMode yes",
            "    ConnectTimeout 10",
        ]
        _write(self.ssh_dir / "config", "\n".join(lines) + "\n", 0o600)

    # ------------------------------------------------------------ helpers
    def write_vif_counters(self, domid: int, devid: int, rx_bytes: int, tx_bytes: int) -> None:
        """Set dom0's byte counters for VIF ``vif<domid>.<devid>`` (what the bandwidth plug-in reads)."""
        stats = self.path(f"/sys/class/net/vif{domid}.{devid}/statistics")
        stats.mkdir(parents=True, exist_ok=True)
        (stats / "rx_bytes").write_text(f"{rx_bytes}\n")
        (stats / "tx_bytes").write_text(f"{tx_bytes}\n")

    def remove_vif(self, domid: int, devid: int) -> None:
        shutil.rmtree(self.path(f"/sys/class/net/vif{domid}.{devid}"), ignore_errors=True)

    def append_console(self, domid: int, data: bytes) -> None:
        """Append guest console output (as xenconsoled logs it)."""
        log = self.path(f"/var/log/xen/guest/console.{domid}")
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as handle:
            handle.write(data)


def ssh_mesh(members: list[tuple[Dom0Sandbox, str]]) -> None:
    """Root SSH trust between every pair of simulated dom0s, as install-plugins sets it up.

    ``members`` pairs each sandbox with its host's address (e.g. ``SimHost.address``); each
    sandbox's sshd is started on that address. Stop them with :meth:`Dom0Sandbox.stop_sshd`.
    """
    for sandbox, address in members:
        sandbox.start_sshd(address)
    for source, _ in members:
        for destination, _ in members:
            if source is not destination:
                source.trust(destination)


def _add_line(path: Path, line: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    existing = path.read_text().splitlines() if path.exists() else []
    if line not in existing:
        with open(path, "a") as handle:
            handle.write(line + "\n")
    os.chmod(path, 0o600)


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    if isinstance(data, str):
        return data
    return data.decode("utf-8", "replace")


def prepare_sandbox(root: Path, *, host_uuid: str, xapi_url: str, local_sr_uuid: str) -> Dom0Sandbox:
    """Lay out (or refresh) a dom0 sandbox at ``root``; idempotent (INTERFACES §4)."""
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    sandbox = Dom0Sandbox(
        root=root, host_uuid=host_uuid, xapi_url=xapi_url.rstrip("/"), local_sr_uuid=local_sr_uuid
    )
    sr = sandbox.sr_path()
    sr.mkdir(parents=True, exist_ok=True)
    # The deployment guide's layout: /images and /boot/guest live in the local SR.
    (sr / "os-images").mkdir(exist_ok=True)
    (sr / "os-guest-kernels").mkdir(exist_ok=True)
    _symlink(root / "images", f"var/run/sr-mount/{local_sr_uuid}/os-images")
    _symlink(root / "boot" / "guest", f"../var/run/sr-mount/{local_sr_uuid}/os-guest-kernels")
    for directory in ("var/log/xen/guest", "sys/class/net", "sys/bus/pci/devices", "dev", "proc", "tmp"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    for name in ("uptime", "meminfo", "cpuinfo", "loadavg"):
        _symlink(root / "proc" / name, f"/proc/{name}")
    _write(
        root / "etc" / "xensource-inventory",
        f"INSTALLATION_UUID='{host_uuid}'\nPRODUCT_BRAND='XCP-ng'\nPRODUCT_VERSION='8.3.0'\n"
        "BUILD_NUMBER='sim'\nMANAGEMENT_INTERFACE='xenbr0'\n",
    )
    _write(
        root / "etc" / "xapi-sim.json",
        json.dumps({"xapi_url": sandbox.xapi_url, "host_uuid": host_uuid, "local_sr_uuid": local_sr_uuid}),
    )
    # lib/: what dom0's site-packages gives plug-ins.
    lib = root / "lib"
    _write(lib / "XenAPIPlugin.py", _XENAPIPLUGIN)
    import XenAPI

    xenapi_source = Path(XenAPI.__file__).with_name("XenAPI.py")
    if not xenapi_source.exists():
        xenapi_source = Path(XenAPI.__file__)
    _write(lib / "XenAPI.py", xenapi_source.read_text())
    # bin/: dom0 tools.
    bindir = sandbox.bin_dir
    srcdir = str(Path(xenapi_driver.__file__).resolve().parents[1])
    _write(bindir / "vhd-util", _VHD_UTIL.format(python=sys.executable, srcdir=srcdir), 0o755)
    _write(bindir / "xenstore", _XENSTORE.format(python=sys.executable, url=sandbox.xapi_url), 0o755)
    for tool in ("read", "write", "rm", "ls", "list", "exists"):
        _symlink(bindir / f"xenstore-{tool}", "xenstore")
    _write(
        bindir / "dom0-ssh-command",
        _SSH_COMMAND.format(
            python=sys.executable, root=str(root), prefixes=MAPPED_PREFIXES, system_path=SYSTEM_PATH
        ),
        0o755,
    )
    _symlink(bindir / "python3", dom0_python())
    # root's ssh identity (dom0s trust each other for migration).
    sandbox.ssh_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(sandbox.ssh_dir, 0o700)
    _keygen(sandbox.ssh_dir / "id_ed25519", f"root@dom0-{host_uuid}")
    sandbox.install_plugins()
    return sandbox


def encode_args(**kwargs: object) -> dict[str, str]:
    """Plug-in arguments are a string map: encode non-strings as JSON."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in kwargs.items()}


__all__ = [
    "Dom0Sandbox",
    "SandboxSSHD",
    "XapiError",
    "dom0_python",
    "encode_args",
    "plugin_files",
    "plugins_source_dir",
    "prepare_sandbox",
    "ssh_mesh",
]
