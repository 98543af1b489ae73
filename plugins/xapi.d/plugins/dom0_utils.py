"""Shared helpers for the xenapi-driver dom0 plug-ins.

Python 3.6 compatible, standard library only: this module runs in
XenServer 8 / XCP-ng 8.x dom0 beside the plug-ins in /etc/xapi.d/plugins.

Everything a plug-in touches on disk goes through ``dom0_path``: it is the one
place that knows the dom0 file system may be rooted somewhere other than "/"
(``XENAPI_DRIVER_DOM0_ROOT``, set only by the simulator's dom0 sandboxes).
Plug-in arguments and results always use real dom0 paths such as
``/var/run/sr-mount/<sr-uuid>``.
"""

import errno
import ipaddress
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import uuid as uuidlib

import XenAPIPlugin

PLUGIN_VERSION = "1.1"

# The single path-root lookup. Everything else derives from it.
DOM0_ROOT = os.environ.get("XENAPI_DRIVER_DOM0_ROOT", "/") or "/"

SR_MOUNT_BASE = "/var/run/sr-mount"
STAGING_ROOT = "/images"
KERNEL_DIR = "/boot/guest"
LOG_FILE = "/var/log/xenapi-driver-plugins.log"

_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_HOSTNAME_LABEL_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")

_LOG = None


def _terminate(signum, frame):
    # XAPI stops a plug-in with SIGTERM (task cancelled, timeout): unwind so every
    # ``finally`` (staging clean-up, child processes) runs before the process ends.
    raise SystemExit(128 + signum)


signal.signal(signal.SIGTERM, _terminate)


def dom0_path(path):
    """Map a real dom0 absolute path onto this dom0's file system root."""
    if not path.startswith("/"):
        raise ValueError("not an absolute dom0 path: %r" % (path,))
    if DOM0_ROOT == "/":
        return os.path.normpath(path)
    return os.path.normpath(os.path.join(DOM0_ROOT, path.lstrip("/")))


def get_logger(name):
    """A logger writing to dom0's plug-in log file (never to stdout: stdout is the reply)."""
    global _LOG
    if _LOG is None:
        _LOG = logging.getLogger("xenapi-driver")
        _LOG.setLevel(logging.DEBUG)
        try:
            target = dom0_path(LOG_FILE)
            parent = os.path.dirname(target)
            if not os.path.isdir(parent):
                os.makedirs(parent)
            handler = logging.FileHandler(target)
        except (OSError, IOError):
            handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"))
        _LOG.addHandler(handler)
    return _LOG.getChild(name)


class Progress(object):
    """Log a line each time another tenth of ``total`` bytes has moved.

    Long transfers run inside XAPI with nobody watching stdout; a line per
    10% in dom0's plug-in log is what an operator tails to see one advance.
    """

    def __init__(self, logger, what, total):
        self.logger = logger
        self.what = what
        self.total = max(0, int(total or 0))
        self.done = 0
        self.reported = 0

    def add(self, count):
        self.done += count
        if self.total <= 0:
            return
        tenth = min(10, self.done * 10 // self.total)
        if tenth > self.reported:
            self.reported = tenth
            self.logger.info("%s: %d%% (%d of %d bytes)", self.what, tenth * 10, self.done, self.total)


# ---------------------------------------------------------------- failures


def fail(code, *params):
    """Raise a XAPI-style failure: the driver maps ``code`` to an exception."""
    raise XenAPIPlugin.Failure(code, [str(p) for p in params])


def invalid(name, reason):
    fail("INVALID_ARGUMENT", name, reason)


# ---------------------------------------------------------------- arguments


def _shown(value, limit=80):
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def require(args, name, verbatim=False):
    """The string argument ``name``; a clear failure when it is missing.

    Identifiers, paths, numbers and flags may also arrive JSON-encoded (as
    ``call_plugin_serialized`` sends them) and are unwrapped: a quoted UUID
    is unambiguous. Free-form text (``verbatim``: XenStore values, passwords,
    tokens) is taken exactly as sent.
    """
    if not isinstance(args, dict) or name not in args:
        fail("MISSING_ARGUMENT", name)
    value = args[name]
    if not isinstance(value, str):
        invalid(name, "must be a string, got %s" % type(value).__name__)
    if not verbatim and len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        # call_plugin_serialized sends every argument JSON-encoded: accept both forms.
        try:
            decoded = json.loads(value)
        except ValueError:
            decoded = None
        if isinstance(decoded, str):
            value = decoded
    return value


def optional(args, name, default=None, verbatim=False):
    if not isinstance(args, dict) or name not in args or args[name] == "":
        return default
    return require(args, name, verbatim)


def validate_uuid(name, value):
    if not isinstance(value, str) or not _UUID_RE.match(value):
        invalid(name, "%s is not a UUID" % _shown(value))
    return value


def uuid_arg(args, name):
    return validate_uuid(name, require(args, name))


def validate_int(name, value, minimum=1, maximum=None):
    if not isinstance(value, str) or not re.match(r"^[0-9]{1,19}$", value):
        invalid(name, "%s is not a non-negative decimal integer" % _shown(value))
    number = int(value)
    if number < minimum:
        invalid(name, "%d is below the minimum %d" % (number, minimum))
    if maximum is not None and number > maximum:
        invalid(name, "%d is above the maximum %d" % (number, maximum))
    return number


def int_arg(args, name, minimum=1, maximum=None, default=None):
    value = optional(args, name)
    if value is None:
        if default is None:
            fail("MISSING_ARGUMENT", name)
        return default
    return validate_int(name, value, minimum, maximum)


def bool_arg(args, name, default=False):
    value = optional(args, name)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    invalid(name, "%s is not a boolean (true/false)" % _shown(value))


def validate_host(name, value):
    """An IPv4/IPv6 address or a DNS host name; never something ssh reads as an option."""
    if not isinstance(value, str) or not value or len(value) > 253:
        invalid(name, "%s is not a host address" % _shown(value))
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    labels = value.rstrip(".").split(".")
    if all(_HOSTNAME_LABEL_RE.match(label) for label in labels) and not labels[-1].isdigit():
        return value
    invalid(name, "%s is not an IP address or host name" % _shown(value))


def validate_domid(name, value):
    return validate_int(name, value, minimum=0, maximum=0x7FEF)


def _clean_abs(name, value):
    if not isinstance(value, str) or not value.startswith("/"):
        invalid(name, "%s is not an absolute path" % _shown(value))
    if "\x00" in value or "\n" in value:
        invalid(name, "path contains control characters")
    parts = value.split("/")
    if ".." in parts or "." in parts:
        invalid(name, "%s contains '.' or '..' components" % _shown(value))
    return os.path.normpath(value)


def validate_sr_path(name, value):
    """``/var/run/sr-mount/<sr-uuid>``: the only shape of SR path we accept."""
    path = _clean_abs(name, value)
    parent, leaf = os.path.split(path)
    if parent != SR_MOUNT_BASE or not _UUID_RE.match(leaf):
        invalid(name, "%s is not %s/<sr-uuid>" % (_shown(value), SR_MOUNT_BASE))
    return path


def sr_path_arg(args, name="sr_path"):
    return validate_sr_path(name, require(args, name))


def validate_inside(name, value, bases):
    """An absolute dom0 path strictly below one of ``bases`` (no '..', no escapes)."""
    path = _clean_abs(name, value)
    for base in bases:
        if path.startswith(base.rstrip("/") + "/"):
            return path
    invalid(name, "%s is not inside %s" % (_shown(value), " or ".join(bases)))


def validate_name(name, value, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"):
    if not isinstance(value, str) or not re.match(pattern, value) or ".." in value:
        invalid(name, "%s is not a plain file name" % _shown(value))
    return value


def json_arg(args, name, default=None):
    value = optional(args, name)
    if value is None:
        if default is None:
            fail("MISSING_ARGUMENT", name)
        return default
    try:
        return json.loads(value)
    except ValueError as exc:
        invalid(name, "not valid JSON: %s" % exc)


def uuid_list_arg(args, name):
    values = json_arg(args, name)
    if not isinstance(values, list) or not values:
        invalid(name, "must be a non-empty JSON list of UUIDs")
    for index, value in enumerate(values):
        validate_uuid("%s[%d]" % (name, index), value)
    if len(set(values)) != len(values):
        invalid(name, "UUIDs must be distinct")
    return values


def to_json(value):
    return json.dumps(value, sort_keys=True)


def new_uuid():
    return str(uuidlib.uuid4())


# ---------------------------------------------------------------- commands


def run_command(argv, input_bytes=None, timeout=None, check=True, env=None):
    """Run ``argv`` (a list, never a shell); return (status, stdout, stderr) as text."""
    log = get_logger("cmd")
    log.debug("running %s", argv)
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if input_bytes is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
    except OSError as exc:
        fail("COMMAND_FAILED", argv[0], "not runnable", str(exc))
    try:
        out, err = proc.communicate(input_bytes, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        fail("TIMEOUT", " ".join(argv[:2]), timeout)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    out = out.decode("utf-8", "replace")
    err = err.decode("utf-8", "replace")
    if check and proc.returncode != 0:
        log.warning("%s exited %d: %s", argv, proc.returncode, err.strip())
        fail("COMMAND_FAILED", " ".join(argv[:2]), proc.returncode, (err or out).strip()[-2000:])
    return proc.returncode, out, err


# ---------------------------------------------------------------- files


def read_inventory():
    """/etc/xensource-inventory as a dict (KEY='value' lines)."""
    result = {}
    try:
        with open(dom0_path("/etc/xensource-inventory")) as handle:
            for line in handle:
                if "=" in line:
                    key, _, value = line.strip().partition("=")
                    result[key] = value.strip().strip("'\"")
    except (IOError, OSError):
        pass
    return result


def makedirs(path, mode=0o755):
    try:
        os.makedirs(path, mode)
    except OSError as exc:
        if exc.errno != errno.EEXIST:
            raise


def remove_tree(path):
    """Remove a staging directory; never follows symlinks out of it."""
    if not os.path.lexists(path):
        return
    if os.path.islink(path) or not os.path.isdir(path):
        os.unlink(path)
        return
    for entry in os.listdir(path):
        remove_tree(os.path.join(path, entry))
    os.rmdir(path)


def remove_stale(directory, prefix, max_age=86400):
    """Remove ``prefix``* entries older than ``max_age`` seconds (left by a killed plug-in)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    now = time.time()
    for name in names:
        if not name.startswith(prefix):
            continue
        path = os.path.join(directory, name)
        try:
            if now - os.lstat(path).st_mtime > max_age:
                get_logger("cleanup").info("removing stale %s", path)
                remove_tree(path)
        except OSError:
            pass


def wait_until(predicate, timeout, interval=0.1):
    """Poll ``predicate`` until it returns a true value or ``timeout`` seconds pass."""
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.time() >= deadline:
            return value
        time.sleep(interval)
