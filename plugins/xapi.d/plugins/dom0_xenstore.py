"""XenStore access for the plug-ins through dom0's xenstore-* tools.

Python 3.6, standard library only. Paths the driver passes are relative to a
domain's home ``/local/domain/<domid>``; they are validated so a plug-in call
can never reach another domain's keys.
"""

import re

import dom0_utils
from dom0_utils import fail

_COMPONENT_RE = re.compile(r"^[A-Za-z0-9_.@:-]{1,64}$")


def domain_path(domid, relative, name="path"):
    """``/local/domain/<domid>/<relative>`` after validating ``relative``."""
    relative = relative.strip("/")
    if not relative:
        return "/local/domain/%d" % domid
    parts = relative.split("/")
    for part in parts:
        if part in (".", "..") or not _COMPONENT_RE.match(part):
            dom0_utils.invalid(name, "%r is not a valid XenStore path below the domain" % relative)
    return "/local/domain/%d/%s" % (domid, "/".join(parts))


def _run(tool, *args, **kwargs):
    return dom0_utils.run_command(["xenstore-" + tool] + list(args), check=False, timeout=30, **kwargs)


def read(path):
    """The value at ``path``, or None when it does not exist."""
    status, out, err = _run("read", path)
    if status != 0:
        if exists(path):
            fail("XENSTORE_ERROR", path, err.strip())
        return None
    return out[:-1] if out.endswith("\n") else out


def exists(path):
    return _run("exists", path)[0] == 0


def write(path, value):
    status, _, err = _run("write", path, value)
    if status != 0:
        fail("XENSTORE_ERROR", path, err.strip())


def rm(path):
    status, _, err = _run("rm", path)
    if status != 0 and exists(path):
        fail("XENSTORE_ERROR", path, err.strip())


def children(path):
    status, out, err = _run("list", path)
    if status != 0:
        if not exists(path):
            return None
        fail("XENSTORE_ERROR", path, err.strip())
    return [line for line in out.splitlines() if line]


def tree(path):
    """Every key below ``path`` as {relative path: value}."""
    result = {}

    def walk(current, prefix):
        names = children(current) or []
        for name in names:
            full = current + "/" + name
            key = prefix + name
            value = read(full)
            if value is not None:
                result[key] = value
            walk(full, key + "/")

    walk(path, "")
    return result
