"""XAPI errors as the simulator raises them.

Why: every failure a client sees must be XAPI's own ``[code, *params]``
list, so handlers raise :class:`XapiError` and the wire layer turns it into
``{Status: Failure, ErrorDescription: [code, *params]}``.
"""

from __future__ import annotations


class XapiError(Exception):
    """An API failure with XAPI's code and (string) parameters."""

    def __init__(self, code: str, *params: object) -> None:
        self.code = str(code)
        self.params = [_text(p) for p in params]
        super().__init__(self.code, *self.params)

    @property
    def details(self) -> list[str]:
        """The wire ``ErrorDescription``."""
        return [self.code, *self.params]

    def __str__(self) -> str:
        return f"{self.code}: {self.params}"


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(_text(v) for v in value)
    return str(value)


def internal(message: str) -> XapiError:
    """``INTERNAL_ERROR [message]`` for simulator bugs and impossible states."""
    return XapiError("INTERNAL_ERROR", message)


def handle_invalid(cls: str, ref: str) -> XapiError:
    return XapiError("HANDLE_INVALID", cls, ref)
