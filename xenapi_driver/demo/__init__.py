"""The demo behind ``./run demo`` (``python -m xenapi_driver.demo``); see doc/source/demo.rst.

Modules: :mod:`~xenapi_driver.demo.runner` (the steps and the command line),
:mod:`~xenapi_driver.demo.simulation` (the simulated hosts and what is
measured on them), :mod:`~xenapi_driver.demo.cloud` (Nova in-process) and
:mod:`~xenapi_driver.demo.report` (progress bars and the timeline).
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """Run the demo; the exit status is 0 when every step that ran succeeded and nothing was left."""
    from xenapi_driver.demo.runner import main as run

    return run(argv)


__all__ = ["main"]
