"""Run the demo with XAPI failing the boot (not a test module; ``test_demo.py`` runs it).

Proves a failing step is reported as FAILED with XAPI's reason, the later
steps are skipped, the exit status is 1 and everything is still cleaned up.
The fault is injected into the simulator through its control endpoint, as
any test of the simulator does: ``VM.start_on`` answers
``INTERNAL_ERROR`` once, on whichever host the server is built.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from xenapi_driver.demo import runner  # noqa: E402

_start = runner.Demo.start


def _start_then_break(self, workdir):
    _start(self, workdir)
    self.sim.remote.faults.fail_next("VM.start_on", "INTERNAL_ERROR", "injected by faulty_demo.py", count=5)


runner.Demo.start = _start_then_break

if __name__ == "__main__":
    sys.exit(runner.main(sys.argv[1:]))
