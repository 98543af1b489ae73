"""From a method name and parameters to a result, as XAPI's dispatcher does.

Why: XAPI resolves ``Class.msg``/``Class_msg``/``Async.Class.msg``, checks
the parameter count (trailing parameters with defaults may be omitted),
refuses calls on pool members (``HOST_IS_SLAVE``), validates the session,
type-checks every parameter against the datamodel, then runs the message.
One dispatcher serves XML-RPC and JSON-RPC alike.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from . import implicit, registry, sessions, tasks
from .context import CallContext
from .errors import XapiError
from .schema import Message
from .wire import coerce

if TYPE_CHECKING:  # pragma: no cover
    from .world import SimHost, World

LOG = logging.getLogger(__name__)

NO_ASYNC_CLASSES = {"session", "task", "event"}
# messages a pool member answers itself
SLAVE_OK = {"session.slave_local_login_with_password", "session.local_logout"}
NO_SESSION_OK = {"session.login_with_password", "session.slave_local_login_with_password"}


class AsyncUnavailable(Exception):
    """An ``Async.`` form XAPI does not have: answered with an XML-RPC fault."""


class Resolved:
    __slots__ = ("is_async", "message", "name")

    def __init__(self, is_async: bool, message: Message, name: str) -> None:
        self.is_async = is_async
        self.message = message
        self.name = name  # canonical Class.msg


def _split(world: World, name: str) -> Message | None:
    schema = world.schema
    if "." in name:
        cls, _, msg = name.partition(".")
        return schema.message(cls, msg)
    # Class_msg: class names contain underscores (VM_metrics), try each split
    i = name.find("_")
    while i > 0:
        m = schema.message(name[:i], name[i + 1 :])
        if m is not None:
            return m
        i = name.find("_", i + 1)
    return None


def resolve(world: World, name: str) -> Resolved:
    """Resolve a wire method name or raise ``MESSAGE_METHOD_UNKNOWN [name]``."""
    cached = world.resolve_cache.get(name)
    if cached is not None:
        return cached
    is_async = False
    rest = name
    if rest.startswith("Async.") or rest.startswith("Async_"):
        is_async = True
        rest = rest[6:]
    msg = _split(world, rest)
    if msg is None:
        raise XapiError("MESSAGE_METHOD_UNKNOWN", name)
    if is_async and not async_allowed(msg):
        raise AsyncUnavailable(name)
    r = Resolved(is_async, msg, msg.full_name)
    world.resolve_cache[name] = r
    return r


def async_allowed(msg: Message) -> bool:
    if msg.cls in NO_ASYNC_CLASSES:
        return False
    if msg.implicit and msg.name not in ("create", "destroy"):
        return False
    return True


def check_arity(name: str, msg: Message, params: list) -> list:
    """Check the count (session excluded) and fill omitted defaults."""
    given = params[1:] if msg.session else list(params)
    total = len(msg.params)
    required = msg.required
    if not (required <= len(given) <= total) or (msg.session and not params):
        raise XapiError("MESSAGE_PARAMETER_COUNT_MISMATCH", name, required, max(0, len(given)))
    if len(given) < total:
        given = list(given)
        for pname, _ in msg.params[len(given) :]:
            given.append(msg.defaults[pname])
    return given


def call(world: World, host: SimHost, name: str, params: list) -> object:
    """Run one API call arriving at ``host``; return a Python value or raise XapiError.

    ``Async.`` calls return the new task's reference at once.
    """
    r = resolve(world, name)
    msg = r.message
    world.count(("Async." + r.name) if r.is_async else r.name)
    given = check_arity(name, msg, params)
    pool = host.pool
    if world.faults.latency:
        time.sleep(world.faults.latency)
    session = None
    if msg.session:
        session = params[0]
        info = None
        if not host.is_master:
            info = pool.sessions.infos.get(session) if isinstance(session, str) else None
            if info is None or info.local_host != host.ref:
                raise XapiError("HOST_IS_SLAVE", host.master_address)
        info = sessions.validate(pool, session)
        if info.local_host is not None and info.local_host != host.ref:
            raise XapiError("SESSION_INVALID", session)
    elif r.name not in SLAVE_OK and not host.is_master:
        raise XapiError("HOST_IS_SLAVE", host.master_address)
    args = [coerce(t, v, pname) for (pname, t), v in zip(msg.params, given, strict=True)]
    ctx = CallContext(world=world, pool=pool, sim_host=host, session=session, method=r.name)
    if r.is_async:
        task = tasks.create(pool.db, f"Async.{r.name}", "", host.ref)
        ctx.task = task
        tasks.run_async(pool.db, task, lambda: execute(ctx, msg, args), r.name)
        return task
    return execute(ctx, msg, args)


def execute(ctx: CallContext, msg: Message, args: list) -> object:
    """Run a resolved, type-checked message (fault injection applies here)."""
    faults = ctx.world.faults
    err = faults.take_failure(f"Async.{msg.full_name}") if ctx.task is not None else None
    if err is None:
        err = faults.take_failure(msg.full_name)
    if err is not None:
        raise err
    handler = registry.lookup_message(msg.full_name)
    if handler is not None:
        return handler(ctx, *args)
    if msg.implicit or msg.name in implicit.GENERIC:
        # explicit messages that are implicit ones in all but name (message.get_record ...)
        return implicit.run(ctx, msg, args)
    # explicit setters XAPI validates (VM.set_memory_static_max ...): plain set
    if msg.name.startswith("set_") and len(args) == 2:
        fname = msg.name[4:]
        if fname in ctx.db.schema.classes[msg.cls].fields:
            ctx.db.set(msg.cls, args[0], fname, args[1])
            return None
    raise XapiError("NOT_IMPLEMENTED", msg.full_name)
