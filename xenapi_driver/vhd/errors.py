"""Exceptions raised by the VHD library.

Every problem with a VHD file (bad structure, broken chain, bad argument) is a
:class:`VHDError`, so callers (the simulator's storage code, the ``vhd-util``
tool) can catch one class and show its message.  ``errno`` mirrors what
blktap's ``vhd-util`` would return, so the CLI can exit with the same code.
"""

import errno as _errno


class VHDError(Exception):
    """Base class of every VHD library error; the message says what to do."""

    errno = _errno.EINVAL

    def __init__(self, message: str, *, path: str | None = None):
        super().__init__(message)
        self.path = path


class VHDFormatError(VHDError):
    """The file is not a valid VHD (truncated, bad cookie/checksum, bad table)."""


class VHDChainError(VHDError):
    """The chain of parents is inconsistent (uuid mismatch, loop, locator escaping the SR)."""


class VHDMissingParentError(VHDChainError):
    """A differencing disk's parent file does not exist."""

    errno = _errno.ENOENT


class VHDNotFoundError(VHDError):
    """The VHD file itself does not exist."""

    errno = _errno.ENOENT
