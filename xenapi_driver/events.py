"""Power-state events: tell Nova within seconds when a VM changes state outside Nova.

Nova's periodic power-state sync runs every ten minutes; a VM shut down from
XenCenter or by its own guest would look Running to Nova until then. The
:class:`PowerStateWatcher` long-polls XAPI's ``event.from`` for VM changes on
a plain thread (no eventlet) and emits Nova lifecycle events for the
instances this compute owns.

It survives a XAPI (toolstack) restart: the session logs in again, and the
watcher starts over from an empty token, which makes XAPI report every VM as
it is now. Comparing those records with the states it last saw emits any
change that happened while it was disconnected, so nothing is missed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from nova.virt import event as virtevent
from xenapi_driver import exception as xexc
from xenapi_driver import vm_utils

LOG = logging.getLogger(__name__)

# (previous XAPI power state or None, new state) -> Nova lifecycle transition.
_RESUMED_FROM = ("Paused", "Suspended")
_TRANSITION = {
    "Halted": virtevent.EVENT_LIFECYCLE_STOPPED,
    "Paused": virtevent.EVENT_LIFECYCLE_PAUSED,
    "Suspended": virtevent.EVENT_LIFECYCLE_SUSPENDED,
}


def transition(previous: str | None, current: str) -> int | None:
    """The lifecycle transition for a change of XAPI power state, or None."""
    if previous == current:
        return None
    if current == "Running":
        return (
            virtevent.EVENT_LIFECYCLE_RESUMED
            if previous in _RESUMED_FROM
            else virtevent.EVENT_LIFECYCLE_STARTED
        )
    return _TRANSITION.get(current)


class PowerStateWatcher:
    """Emits Nova lifecycle events for this host's instance VMs from XAPI's event stream."""

    def __init__(
        self,
        session: Any,
        emit: Callable[[virtevent.LifecycleEvent], None],
        *,
        poll_timeout: float = 30.0,
        retry_interval: float = 2.0,
    ) -> None:
        self._session = session
        self._emit = emit
        self._poll_timeout = poll_timeout
        self._retry_interval = retry_interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # VM ref -> (instance uuid, power state) for this host's instance VMs.
        self._known: dict[str, tuple[str, str]] = {}
        #: Set once the first full snapshot is read (tests and start-up wait on it).
        self.ready = threading.Event()

    # -- thread ----------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="xenapi-power-events", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop watching; returns once the current poll ends (at most ``poll_timeout``)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(self._poll_timeout + 5 if timeout is None else timeout)

    def _run(self) -> None:
        token = ""
        while not self._stop.is_set():
            try:
                result = self._session.call_xenapi("event.from", ["vm"], token, float(self._poll_timeout))
            except xexc.XenAPISessionClosed:
                return
            except Exception as exc:  # noqa: BLE001 - keep watching whatever XAPI does
                if self._stop.is_set():
                    return
                LOG.warning(
                    "Watching XAPI events failed (%s); resynchronising in %s s", exc, self._retry_interval
                )
                token = ""  # a fresh token: XAPI reports every VM as it is now
                self._stop.wait(self._retry_interval)
                continue
            full = token == ""
            self._process(result.get("events") or [], full)
            token = result.get("token") or ""
            if full:
                self.ready.set()

    # -- events ------------------------------------------------------------------

    def _process(self, events: list[dict[str, Any]], full: bool) -> None:
        host_ref = self._session.host_ref
        seen: set[str] = set()
        initial = not self.ready.is_set()
        for ev in events:
            if ev.get("class", "").lower() != "vm":
                continue
            ref = ev.get("ref")
            if ev.get("operation") == "del" or "snapshot" not in ev:
                self._known.pop(ref, None)
                continue
            record = ev["snapshot"]
            seen.add(ref)
            if not (vm_utils.is_instance_vm(record) and vm_utils.belongs_to_host(record, host_ref)):
                self._known.pop(ref, None)
                continue
            uuid = vm_utils.nova_uuid(record)
            state = record.get("power_state", "")
            previous = self._known.get(ref)
            self._known[ref] = (uuid, state)
            if initial:
                continue  # Nova syncs the starting state itself
            change = transition(previous[1] if previous else None, state)
            if change is not None and (previous is not None or state == "Running"):
                self._send(uuid, change)
        if full:
            # VMs that vanished while we were disconnected.
            for ref in set(self._known) - seen:
                self._known.pop(ref, None)

    def _send(self, uuid: str, change: int) -> None:
        LOG.debug("Instance %s: %s", uuid, virtevent.NAMES.get(change, change))
        try:
            self._emit(virtevent.LifecycleEvent(uuid, change))
        except Exception:  # noqa: BLE001 - a broken listener must not stop the watcher
            LOG.exception("Emitting a lifecycle event for %s failed", uuid)
