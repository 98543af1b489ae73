"""``python -m xenapi_driver.demo`` (what ``./run demo`` runs)."""

import sys

from xenapi_driver.demo import main

sys.exit(main(sys.argv[1:]))
