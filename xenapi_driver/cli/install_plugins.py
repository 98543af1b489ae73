"""``xenapi-driver install-plugins``: placeholder until the plug-in installer lands."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "install-plugins", help="Install the dom0 plug-ins on a XenServer host (not yet available)."
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    print("install-plugins is not implemented yet")
    return 2
