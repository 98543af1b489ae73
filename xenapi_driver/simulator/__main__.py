"""``python -m xenapi_driver.simulator``: same as the ``xenapi-simulator`` console script."""

import sys

from .cli import main

if __name__ == "__main__":  # importing this module (e.g. walking the package) must not start pools
    sys.exit(main())
