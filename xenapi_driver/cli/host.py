"""``xenapi-driver host ...``: placeholder until host readiness lands."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("host", help="Host readiness over SSH (not yet available).")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    print("host commands are not implemented yet")
    return 2
