"""Exceptions raised by the XAPI session and the layers above it.

Every XAPI failure becomes a :class:`XenAPIError` carrying XAPI's error code
and parameters, so callers branch on ``err.code`` (``"HANDLE_INVALID"``,
``"VM_BAD_POWER_STATE"``...) instead of parsing text. It subclasses the SDK's
``XenAPI.Failure`` (with the usual ``details`` list) so code written against
the SDK keeps working.

Messages name the URL and the user when that helps an operator, and never a
password: exception text ends up in Nova's instance faults, visible to
users.
"""

from __future__ import annotations

from typing import Any

import XenAPI


def _restore(cls: type, state: dict[str, Any]) -> BaseException:
    """Rebuild an exception from its ``__dict__`` (see ``__reduce__``)."""
    exc = cls.__new__(cls)
    exc.__dict__.update(state)
    exc.args = (state.get("code"), state.get("params"))
    return exc


class ConfigurationError(ValueError):
    """The ``[xenserver]`` configuration cannot work; the text says what to fix."""


class XenAPIError(XenAPI.Failure):
    """A XAPI call failed with ``code`` and ``params`` (XAPI's ErrorDescription).

    ``method`` and ``url``, when known, say which call to which endpoint
    failed; ``message`` replaces the generic text with a more helpful one.
    """

    def __init__(
        self,
        code: str,
        params: list[str] | tuple[str, ...] = (),
        *,
        method: str | None = None,
        url: str | None = None,
        message: str | None = None,
    ) -> None:
        self.code = str(code)
        self.params = [str(p) for p in params]
        self.method = method
        self.url = url
        self.message = message
        XenAPI.Failure.__init__(self, [self.code, *self.params])
        Exception.__init__(self, self.code, self.params)

    def __str__(self) -> str:
        if self.message:
            return self.message
        text = f"XAPI error {self.code}"
        if self.params:
            text += " " + str(self.params)
        where = []
        if self.method:
            where.append(f"calling {self.method}")
        if self.url:
            where.append(f"at {self.url}")
        if where:
            text += " (" + " ".join(where) + ")"
        return text

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.params!r})"

    def __reduce__(self):  # keep keyword-only attributes across pickling
        return (_restore, (type(self), dict(self.__dict__)))


class XenAPIConnectionError(XenAPIError):
    """XAPI could not be reached, or the connection broke or timed out.

    ``code`` is ``CONNECTION_FAILED`` or ``CONNECTION_TIMEOUT``.
    """


class XenAPILoginError(XenAPIError):
    """Logging in to XAPI failed (bad credentials, unreachable host...).

    ``username`` and ``url`` name what was tried; never the password.
    """

    def __init__(
        self,
        code: str,
        params: list[str] | tuple[str, ...] = (),
        *,
        username: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.username = username
        super().__init__(code, params, **kwargs)


class XenAPIUnreachableError(XenAPILoginError, XenAPIConnectionError):
    """Logging in failed because XAPI did not answer at all."""


class XenAPISessionClosed(XenAPIError):
    """The session was closed (driver shutting down); no further calls."""


class XenAPITaskTimeout(XenAPIError):
    """An ``Async.*`` call did not finish in time; its task was cancelled.

    ``code`` is ``TASK_TIMEOUT`` and ``params`` are ``[task_ref, method,
    timeout_seconds]``.
    """


class XenAPIPluginVersionError(XenAPIError):
    """The dom0 plug-ins on the managed host are missing or too old.

    ``code`` is ``XENAPI_MISSING_PLUGIN`` or ``PLUGIN_VERSION_MISMATCH``
    (params ``[host, installed, required]``).
    """
