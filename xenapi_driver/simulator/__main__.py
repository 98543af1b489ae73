"""``python -m xenapi_driver.simulator``: same as the ``xenapi-simulator`` console script."""

import sys

from .cli import main

sys.exit(main())
