"""The context a handler runs in: which pool, host, session and task.

Why: handlers need the pool's database, the host the call arrived at (for
its dom0 sandbox), the caller's session, and -- for ``Async.`` calls and
HTTP handlers given ``task_id`` -- the task to report progress on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import XapiError
from .schema import NULL_REF

if TYPE_CHECKING:  # pragma: no cover
    from .db import Database
    from .world import SimHost, SimPool, World


@dataclass
class CallContext:
    """Passed as the first argument to every handler.

    ``host`` is the *reference* of the host the call arrived at (use
    ``ctx.sim_host`` for the :class:`SimHost` object).  ``task`` is the task
    reference or ``None`` for a synchronous call.
    """

    world: World
    pool: SimPool
    sim_host: SimHost
    session: str | None = None
    task: str | None = None
    method: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def db(self) -> Database:
        return self.pool.db

    @property
    def host(self) -> str:
        return self.sim_host.ref

    def set_progress(self, fraction: float) -> None:
        """Report progress (0..1) on the task, if any; raises TASK_CANCELLED when cancelled."""
        if not self.task:
            return
        with self.db.lock:
            if not self.db.exists("task", self.task):
                return
            self.check_cancelled()
            self.db.set("task", self.task, "progress", max(0.0, min(1.0, float(fraction))))

    def check_cancelled(self) -> None:
        """Raise ``TASK_CANCELLED [task]`` if a client asked to cancel our task."""
        if not self.task:
            return
        with self.db.lock:
            if not self.db.exists("task", self.task):
                return
            if self.db.get("task", self.task)["status"] in ("cancelling", "cancelled"):
                raise XapiError("TASK_CANCELLED", self.task)

    def host_obj(self, ref: str) -> SimHost:
        """The :class:`SimHost` for a host reference in this pool (HANDLE_INVALID otherwise)."""
        host = self.pool.host_by_ref(ref)
        if host is None:
            raise XapiError("HANDLE_INVALID", "host", ref)
        return host

    @property
    def user(self) -> str:
        if not self.session or self.session == NULL_REF:
            return ""
        try:
            return self.db.get("session", self.session)["auth_user_name"]
        except XapiError:
            return ""
