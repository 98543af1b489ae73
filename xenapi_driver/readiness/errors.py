"""Exit codes, errors and the result object shared by every readiness phase.

Why one module: the CLI maps each outcome to a documented exit code, and the
driver/installer want the same outcome as an exception. Keeping the mapping
in one place means the two can never disagree.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class ExitCode(enum.IntEnum):
    """Documented exit codes of ``xenapi-driver host ...`` (see doc/source/ci-nodes.rst)."""

    OK = 0  #: the phase succeeded (host ready, script done, host down)
    TIMEOUT = 1  #: the overall timeout passed before the phase succeeded
    USAGE = 2  #: bad command line or local input (missing key file, unreadable script)
    HOST_KEY_MISMATCH = 3  #: the host presented a key that differs from the recorded one
    SCRIPT_FAILED = 4  #: the remote script exited non-zero, lost its connection or ran too long


class ReadinessError(Exception):
    """Base of every readiness failure; ``exit_code`` is what the CLI returns."""

    exit_code: ExitCode = ExitCode.TIMEOUT


class ReadinessTimeout(ReadinessError):
    """The overall timeout passed; the message says what was last seen."""

    exit_code = ExitCode.TIMEOUT


class UsageError(ReadinessError):
    """Local input is unusable (key file, script file, known_hosts file, arguments)."""

    exit_code = ExitCode.USAGE


class HostKeyMismatch(ReadinessError):
    """The host's key differs from the recorded one (or is unknown while unknown keys are refused).

    Never retried: a changed key is either a reinstall (the operator says so
    with ``accept_new_host_key``) or an attack, and only a human can tell.
    """

    exit_code = ExitCode.HOST_KEY_MISMATCH

    def __init__(self, message: str, *, name: str, expected: str | None, actual: str) -> None:
        super().__init__(message)
        self.name = name
        self.expected_fingerprint = expected
        self.actual_fingerprint = actual


class ScriptFailed(ReadinessError):
    """The remote script failed: non-zero exit, lost connection or its own timeout."""

    exit_code = ExitCode.SCRIPT_FAILED

    def __init__(self, message: str, *, exit_status: int | None = None) -> None:
        super().__init__(message)
        self.exit_status = exit_status


@dataclass
class ReadinessResult:
    """Outcome of one phase (or one chain of phases) against one host.

    ``ok`` and ``exit_code`` summarise it; ``events`` holds every phase
    transition that was reported, in order; ``error`` is the matching
    exception when the phase failed (see :meth:`raise_for_status`).
    """

    ok: bool
    exit_code: ExitCode
    phase: str
    state: str
    host: str
    port: int
    elapsed: float
    detail: str
    attempts: int = 0
    host_key_fingerprint: str | None = None
    exit_status: int | None = None
    stdout: str = ""
    stderr: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)
    error: ReadinessError | None = field(default=None, repr=False)

    def raise_for_status(self) -> ReadinessResult:
        """Raise the failure as an exception (for callers that prefer exceptions); else return self."""
        if self.error is not None:
            raise self.error
        return self

    def __bool__(self) -> bool:
        return self.ok
