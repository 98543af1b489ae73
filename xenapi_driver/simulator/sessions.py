"""Sessions: login, validation, logout and XAPI's session garbage collection.

Why: real XAPI limits sessions per originator (500), per other user (500)
and for "anonymous" root logins without an originator (400), destroying the
oldest-used session when a limit is passed.  A client that leaks sessions
invalidates its neighbours' -- tests must be able to see that here too.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import XapiError
from .schema import NULL_REF
from .wire import now

if TYPE_CHECKING:  # pragma: no cover
    from .world import SimHost, SimPool

DEFAULT_LIMITS = {"anonymous": 400, "originator": 500, "user": 500}
IDLE_LIMIT = 24 * 3600.0


@dataclass
class SessionInfo:
    ref: str
    bucket: tuple[str, str]
    last_used: float
    local_host: str | None = None  # host ref for slave_local_login sessions
    registered: set[str] | None = None  # event.register classes (legacy event API)
    event_since: int = 0


@dataclass
class SessionTable:
    """In-memory bookkeeping beside the ``session`` records in the database."""

    limits: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    infos: dict[str, SessionInfo] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _bucket(uname: str, originator: str) -> tuple[str, str]:
    if originator:
        return ("originator", originator)
    if uname == "root":
        return ("anonymous", "")
    return ("user", uname)


def login(pool: SimPool, host: SimHost, uname: str, pwd: str, originator: str, *, local: bool = False) -> str:
    """Authenticate and create a session; never puts the password in an error."""
    if uname != pool.username or pwd != pool.password:
        raise XapiError("SESSION_AUTHENTICATION_FAILED", uname, "Authentication failure")
    db = pool.db
    stamp = now()
    with db.lock:
        ref = db.create(
            "session",
            this_host=host.ref,
            this_user=NULL_REF,
            last_active=stamp,
            validation_time=stamp,
            pool=False,
            is_local_superuser=True,
            auth_user_name=uname,
            originator=originator,
        )
        table = pool.sessions
        bucket = _bucket(uname, originator)
        with table.lock:
            table.infos[ref] = SessionInfo(ref, bucket, time.monotonic(), host.ref if local else None)
            _collect(pool, bucket)
    return ref


def _collect(pool: SimPool, bucket: tuple[str, str]) -> None:
    """Destroy the oldest-used sessions of ``bucket`` beyond its limit (lock held)."""
    table = pool.sessions
    limit = table.limits.get(bucket[0], 500)
    same = [i for i in table.infos.values() if i.bucket == bucket]
    if len(same) <= limit:
        return
    same.sort(key=lambda i: i.last_used)
    for info in same[: len(same) - limit]:
        _drop(pool, info.ref)


def _drop(pool: SimPool, ref: str) -> None:
    pool.sessions.infos.pop(ref, None)
    if pool.db.exists("session", ref):
        pool.db.destroy("session", ref)


def logout(pool: SimPool, ref: str) -> None:
    with pool.db.lock, pool.sessions.lock:
        _drop(pool, ref)


def validate(pool: SimPool, ref: object) -> SessionInfo:
    """Return the session's bookkeeping or raise ``SESSION_INVALID [ref]``."""
    table = pool.sessions
    info = table.infos.get(ref) if isinstance(ref, str) else None
    if info is None:
        raise XapiError("SESSION_INVALID", str(ref))
    t = time.monotonic()
    if t - info.last_used > IDLE_LIMIT:
        logout(pool, info.ref)
        raise XapiError("SESSION_INVALID", str(ref))
    info.last_used = t
    return info


def invalidate_all(pool: SimPool) -> None:
    """What a toolstack restart does: every session of the pool is gone."""
    with pool.db.lock, pool.sessions.lock:
        for ref in list(pool.sessions.infos):
            _drop(pool, ref)
        for ref in pool.db.all("session"):
            pool.db.destroy("session", ref)


def invalidate_local(pool: SimPool, host_ref: str) -> None:
    """What a pool member's restart does: its own (slave-local) sessions are gone."""
    with pool.db.lock, pool.sessions.lock:
        for ref in [r for r, i in pool.sessions.infos.items() if i.local_host == host_ref]:
            _drop(pool, ref)
