"""The demo behind ``./run demo``.

Until the XAPI simulator and the driver land, this says so honestly rather
than pretending: it checks the installation and exits.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    import nova.virt.xenapi  # noqa: F401  (the shim resolves to our driver)

    print("xenapi-driver is installed and Nova can load it (compute_driver = xenapi.XenAPIDriver).")
    print("The full demo (simulated pool, boot, snapshot, resize, live migration) is not built yet.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
