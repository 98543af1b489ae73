"""Host readiness over SSH: the honest "is this XenServer host back?" check.

XenServer hosts reboot during installation and pool joins; the only reliable
signal that one is ready is a status file in dom0, read over SSH. This
package polls for it with bounded timeouts and back-off, survives reboots
and (when told) reinstalls, runs set-up and pre-snapshot scripts, and reports
every phase transition as an event. The CLI lives in
:mod:`xenapi_driver.cli.host`; the CI wiring is in ``doc/source/ci-nodes.rst``.
"""

from xenapi_driver.readiness.errors import (
    ExitCode,
    HostKeyMismatch,
    ReadinessError,
    ReadinessResult,
    ReadinessTimeout,
    ScriptFailed,
    UsageError,
)
from xenapi_driver.readiness.events import EventRecorder, json_line_writer
from xenapi_driver.readiness.hostkeys import HostKeyVerifier, fingerprint
from xenapi_driver.readiness.phases import (
    PRE_SNAPSHOT,
    RUN_SCRIPT,
    WAIT_DOWN,
    WAIT_READY,
    HostReadiness,
    wait_for_host_ready,
)
from xenapi_driver.readiness.timing import Backoff, Deadline, poll_until

__all__ = [
    "PRE_SNAPSHOT",
    "RUN_SCRIPT",
    "WAIT_DOWN",
    "WAIT_READY",
    "Backoff",
    "Deadline",
    "EventRecorder",
    "ExitCode",
    "HostKeyMismatch",
    "HostKeyVerifier",
    "HostReadiness",
    "ReadinessError",
    "ReadinessResult",
    "ReadinessTimeout",
    "ScriptFailed",
    "UsageError",
    "fingerprint",
    "json_line_writer",
    "poll_until",
    "wait_for_host_ready",
]
