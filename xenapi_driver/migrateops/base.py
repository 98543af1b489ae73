"""What every role of a resize shares: the sessions, the test hook, progress and the journal.

:class:`~xenapi_driver.migrateops.MigrateOps` is one object per compute
that plays the source (``source.py``), destination (``destination.py``)
and revert/confirm (``revert.py``) roles; each role is a mixin over this
base so the shared state lives in one place.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

from xenapi_driver.migrateops.dest_session import open_dest_session
from xenapi_driver.migrateops.journal import find_kept, read_journal, write_journal

LOG = logging.getLogger(__name__)

#: Where ``MigrateOps.step_hook`` fires (tests inject failures there): source, then destination.
STEP_HOOKS = (
    "snapshot",
    "copy_parent",
    "power_off",
    "rename",
    "copy_leaf",
    "import",
    "create_vm",
    "power_on",
)


class MigrateBase:
    """The state shared by the source, destination and revert roles of one compute."""

    def __init__(
        self,
        session: Any,
        vmops: Any,
        *,
        dest_session_factory: Callable[[str], Any] | None = None,
        volumeops: Any = None,
    ) -> None:
        self._session = session
        self._vmops = vmops
        #: VolumeOps (Cinder volumes): detached from the source at power-off, attached to the
        #: destination VM by finish_migration, re-attached to the original on revert.
        self._volumeops = volumeops if volumeops is not None else getattr(vmops, "volumeops", None)
        self._dest_session_factory = dest_session_factory or self._open_dest_session
        #: Test hook: called with each step name just before the step runs.
        self.step_hook: Callable[[str], None] | None = None

    def _hook(self, step: str) -> None:
        if self.step_hook is not None:
            self.step_hook(step)

    @staticmethod
    def _progress(instance: Any, percent: int) -> None:
        """Nova shows ``instance.progress`` to users; a failed save never fails the resize."""
        instance.progress = int(percent)
        try:
            instance.save()
        except Exception as exc:  # noqa: BLE001 - progress is informative only
            LOG.debug("Could not save progress %s of %s: %s", percent, instance.uuid, exc)

    def _open_dest_session(self, dest: str) -> Any:
        return open_dest_session(dest)

    @contextlib.contextmanager
    def _dest_session(self, dest: str) -> Iterator[Any]:
        if dest == self._session.host_address:
            yield self._session
            return
        session = self._dest_session_factory(dest)
        try:
            yield session
        finally:
            with contextlib.suppress(Exception):
                session.close()

    def _journal(self, vm_ref: str) -> dict[str, Any]:
        return read_journal(self._session, vm_ref)

    def _write_journal(self, vm_ref: str, journal: dict[str, Any]) -> None:
        write_journal(self._session, vm_ref, journal)

    def _step_done(self, vm_ref: str, journal: dict[str, Any], step: str) -> None:
        journal.setdefault("steps", []).append(step)
        self._write_journal(vm_ref, journal)

    def _kept(self, instance: Any) -> tuple[str, dict[str, Any]] | None:
        """The original VM kept for revert (or the instance VM with an open journal)."""
        return find_kept(self._session, instance)
