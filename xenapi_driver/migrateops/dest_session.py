"""A XAPI session to the destination host, made from this compute's own URL and credentials.

The xapi transport and the held-parent lookup talk to the destination's
XAPI; Nova only passes its address (``dest``), so the URL is this compute's
``[xenserver] connection_url`` with the host replaced. No secret is written
anywhere.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from xenapi_driver import conf as xconf


def dest_url(connection_url: str, dest: str) -> str:
    """The destination host's XAPI URL: our own URL's scheme and port, the destination's address."""
    parts = urllib.parse.urlsplit(connection_url)
    host = f"[{dest}]" if ":" in dest and not dest.startswith("[") else dest
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit((parts.scheme or "https", netloc, parts.path or "/", "", ""))


def open_dest_session(dest: str) -> Any:
    """A new session to ``dest`` with this compute's credentials and TLS settings."""
    from xenapi_driver.session import XenAPISession

    opts = xconf.CONF.xenserver
    return XenAPISession(
        dest_url(opts.connection_url, dest),
        opts.connection_username,
        opts.connection_password,
        originator=opts.originator,
        concurrent=2,
        login_timeout=opts.login_timeout,
        ca_file=opts.ca_file,
        insecure=opts.insecure,
    )
