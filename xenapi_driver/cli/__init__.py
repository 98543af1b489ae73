"""The ``xenapi-driver`` command: one entry point, one module per subcommand.

Each subcommand module defines ``register(subparsers)`` which adds its
parser and sets ``func`` (called with the parsed namespace, returns the exit
code). Keeping them apart lets each feature own its command-line surface.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMAND_MODULES = (
    "xenapi_driver.cli.install_plugins",
    "xenapi_driver.cli.host",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xenapi-driver",
        description="Operator tools for the XenServer / XCP-ng Nova driver.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
