"""Resize and cold migration: move an instance's VHD chains between dom0s, then confirm or revert.

The four Nova entry points (``migrate_disk_and_power_off`` on the source,
``finish_migration`` on the destination, ``confirm_migration`` and
``finish_revert_migration``) map to the methods of :class:`MigrateOps`; the
driver only delegates. ``doc/source/resize.rst`` draws the sequence.

Where each part lives (one job a module):

* ``checks.py``: refusals before anything changes, and the mode (same host,
  shared SR, rsync or xapi).
* ``source.py``: ``migrate_disk_and_power_off`` (snapshot, copy, power off,
  keep the original).
* ``destination.py``: ``finish_migration`` (import, size, create, start) and
  ``recover_host``.
* ``revert.py``: ``finish_revert_migration``, ``confirm_migration`` and the
  rollback of a failed migrate.
* ``held.py``: which parents the destination already holds (not sent).
* ``copiers.py`` and ``streaming.py``: the rsync and xapi transports.
* ``resize_down.py``: the shrunk copy of the root disk for a resize down.
* ``journal.py``, ``errors.py``, ``dest_session.py``, ``base.py``: the
  journal and markers, how a resize fails, the destination's XAPI session,
  and the state every role shares.

Why it is built this way:

* **Downtime depends on the leaf, not the disk.** Each disk is snapshotted
  while the guest runs (``VDI.snapshot`` turns its data into an immutable,
  hidden parent and gives the disk an empty leaf); the parents are copied
  while the guest keeps running, then the guest is powered off and only the
  leaves (the writes since the snapshot) are copied.
* **Nothing is lost.** The source VM is never changed beyond a rename until
  the user confirms: it is kept (renamed ``<name>-orig``, with its Nova UUID
  moved from ``nova_uuid`` to ``nova_resize_of`` so no lookup mistakes it for
  the instance) and its disks keep their chains. Every completed step is
  journaled in the kept VM's ``other_config['nova_resize']``, so a
  nova-compute killed half-way can be reverted by Nova's own ``init_host``
  (it calls ``finish_revert_migration`` for instances left in
  RESIZE_MIGRATING) and :meth:`MigrateOps.recover_host` removes half-imported
  disks on a destination.
* **Two transports.** ``rsync`` (default): the dom0 ``migration`` plug-in
  rsyncs each VHD into the destination dom0's ``/images/instance<uuid>/`` and
  ``move_vhds_into_sr`` imports the chain there. ``xapi``: nova-compute
  streams ``GET /export_raw_vdi?format=vhd[&base=parent]`` from the source
  host into ``PUT /import_raw_vdi?format=vhd`` on the destination host (full
  base first, then each delta), so dom0s need no SSH trust. The destination's
  XAPI URL is this compute's ``[xenserver] connection_url`` with the host
  replaced by the destination address Nova passes (``dest``); the
  credentials are this compute's own. No secret is ever written to metadata.
* **Same host or shared SR: no copy.** After power-off each disk is cloned
  (``VDI.clone``, copy-on-write, constant time) and the new VM uses the clones.
* **Parents the destination holds are not sent.** Before copying, the
  destination's ``migration.vhd_identities`` lists its hidden, intact base
  copies by VHD unique id, virtual and physical size (for example the base
  copy of an image its image cache holds). The chain sent stops above the
  first parent whose identity, and whose whole parent chain's, the
  destination holds; the received chain is linked onto that held VDI, which
  is only read (see :func:`choose_held`).
* **Resize down** (a smaller root disk): only for one ext3/ext4 partition;
  the guest is powered off first and dom0 writes a shrunk copy of the root
  disk, which is sent (or used) instead of it: see :mod:`xenapi_driver.migrateops.resize_down`.
"""

from __future__ import annotations

from xenapi_driver.migrateops import resize_down
from xenapi_driver.migrateops.base import STEP_HOOKS, MigrateBase
from xenapi_driver.migrateops.checks import FILE_SR_TYPES
from xenapi_driver.migrateops.copiers import _RsyncCopier, _staging_id, _XapiCopier
from xenapi_driver.migrateops.dest_session import dest_url
from xenapi_driver.migrateops.destination import DestinationRole, destroy_incoming
from xenapi_driver.migrateops.errors import ResizeStepFailed, _refuse
from xenapi_driver.migrateops.held import choose_held
from xenapi_driver.migrateops.journal import (
    INCOMING_KEY,
    JOURNAL_KEY,
    KEPT_SUFFIX,
    RESIZE_OF_KEY,
    SNAPSHOT_KEY,
    STEPS,
)
from xenapi_driver.migrateops.revert import RevertRole
from xenapi_driver.migrateops.source import SourceRole
from xenapi_driver.migrateops.streaming import COPY_CHUNK, HTTP_TIMEOUT

__all__ = [
    "COPY_CHUNK",
    "FILE_SR_TYPES",
    "HTTP_TIMEOUT",
    "INCOMING_KEY",
    "JOURNAL_KEY",
    "KEPT_SUFFIX",
    "RESIZE_OF_KEY",
    "SNAPSHOT_KEY",
    "STEPS",
    "STEP_HOOKS",
    "MigrateBase",
    "MigrateOps",
    "ResizeStepFailed",
    "_RsyncCopier",
    "_XapiCopier",
    "_refuse",
    "_staging_id",
    "choose_held",
    "dest_url",
    "destroy_incoming",
    "resize_down",
]


class MigrateOps(SourceRole, DestinationRole, RevertRole):
    """Resize and cold migration for one compute (source and destination roles).

    One object per compute plays every role, because Nova calls the same
    driver as source, destination and (on revert) source again; the roles
    live in their own modules and share :class:`MigrateBase`'s state.
    """
