"""Tasks: ``Async.`` calls, HTTP handler tasks, cancellation and task GC.

Why: clients run long operations as ``Async.<Class>.<msg>`` and poll the
task's ``status``/``progress``/``result``/``error_info``; XAPI keeps at
most 200 completed tasks.  The simulator must behave the same so polling
code is proven here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import XapiError
from .schema import NULL_REF
from .wire import now, xml_value

if TYPE_CHECKING:  # pragma: no cover
    from .db import Database

MAX_COMPLETED = 200
FINISHED = ("success", "failure", "cancelled")


def create(db: Database, label: str, description: str = "", host: str = NULL_REF) -> str:
    """A pending task, as ``task.create`` or an ``Async.`` call makes it."""
    return db.create(
        "task",
        name_label=label,
        name_description=description,
        status="pending",
        progress=0.0,
        created=now(),
        resident_on=host,
        allowed_operations=["cancel"],
    )


def succeed(db: Database, task: str, value: object) -> None:
    """Complete ``task`` with ``value`` (stored XML-RPC-serialised, void as "")."""
    _finish(db, task, status="success", result="" if value is None else xml_value(value))


def fail(db: Database, task: str, details: list[str]) -> None:
    status = "cancelled" if details and details[0] == "TASK_CANCELLED" else "failure"
    _finish(db, task, status=status, error_info=[str(d) for d in details])


def _finish(db: Database, task: str, **fields: object) -> None:
    """End a pending task once (a finished or vanished task is left alone), then collect old ones."""
    with db.lock:
        if not db.exists("task", task) or db.get("task", task)["status"] in FINISHED:
            return
        db.update("task", task, progress=1.0, finished=now(), allowed_operations=[], **fields)
        gc(db)


def cancel(db: Database, task: str) -> None:
    """``task.cancel``: a pending task goes to ``cancelling``; its worker finishes it."""
    with db.lock:
        rec = db.get("task", task)
        if rec["status"] == "pending":
            db.update("task", task, status="cancelling", allowed_operations=[])


def gc(db: Database) -> None:
    """Destroy the oldest completed tasks beyond ``MAX_COMPLETED`` (lock held)."""
    done = [(db.modified(("task"), ref), ref) for ref, rec in db.items("task") if rec["status"] in FINISHED]
    if len(done) <= MAX_COMPLETED:
        return
    done.sort()
    for _, ref in done[: len(done) - MAX_COMPLETED]:
        db.destroy("task", ref)


def run_async(db: Database, task: str, work: Callable[[], object], name: str = "") -> threading.Thread:
    """Run ``work()`` in a thread and record its outcome on ``task``."""

    def body() -> None:
        try:
            with db.lock:
                if db.exists("task", task) and db.get("task", task)["status"] == "cancelling":
                    raise XapiError("TASK_CANCELLED", task)
            value = work()
        except XapiError as e:
            fail(db, task, e.details)
        except Exception as e:  # noqa: BLE001 - a handler bug must still end the task
            fail(db, task, ["INTERNAL_ERROR", f"{type(e).__name__}: {e}"])
        else:
            # finished despite a late cancel request: the work happened, report success
            succeed(db, task, value)

    t = threading.Thread(target=body, name=f"task {name}", daemon=True)
    t.start()
    return t
