"""``xenapi-simulator``: run simulated XenServer pools in the foreground.

Why: anyone writing XAPI clients can point them at a faithful pool
without a XenServer; the demo and the subprocess mode of the Python API
use the same entry point.  Prints URLs and credentials, then serves until
interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading

from . import api


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--hosts takes N or N,M,... (hosts per pool), not {text!r}"
        ) from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("every pool needs at least one host")
    return sizes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="xenapi-simulator", description="Run simulated XenServer (XAPI) pools.")
    ap.add_argument(
        "--hosts", type=_sizes, default=[3], help="hosts per pool: N, or N,M,... for several pools"
    )
    ap.add_argument("--pools", type=int, default=None, help="number of pools of --hosts hosts each")
    ap.add_argument("--state-dir", default=None, help="where dom0 sandboxes and SRs live (default: temp dir)")
    ap.add_argument("--username", default=api.DEFAULT_USERNAME)
    ap.add_argument(
        "--password",
        default=None,
        help="login password (default: $XAPI_SIM_PASSWORD or 'xenroot'); prefer the environment variable",
    )
    ap.add_argument(
        "--https", action="store_true", help="serve HTTPS with a generated self-signed certificate"
    )
    ap.add_argument("--address-mode", choices=("ip", "port"), default="ip")
    ap.add_argument("--port", type=int, default=0, help="port shared by all hosts (ip mode); 0 = pick one")
    ap.add_argument("--host-memory-gib", type=int, default=64, help="memory of each host (GiB)")
    ap.add_argument("--host-cpus", type=int, default=8, help="CPUs of each host")
    ap.add_argument("--json", action="store_true", help="print one JSON line (for programs) instead of text")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    sizes = args.hosts
    if args.pools is not None:
        if len(sizes) != 1:
            ap.error("--pools needs a single --hosts N")
        sizes = sizes * args.pools
    password = args.password or os.environ.get("XAPI_SIM_PASSWORD") or api.DEFAULT_PASSWORD
    try:
        sim = api.start(
            sizes,
            state_dir=args.state_dir,
            username=args.username,
            password=password,
            https=args.https,
            address_mode=args.address_mode,
            port=args.port,
            host_memory=args.host_memory_gib * 1024**3,
            host_cpus=args.host_cpus,
        )
    except OSError as e:
        print(f"xenapi-simulator: cannot start: {e}", file=sys.stderr)
        return 1
    info = sim.describe()
    master = sim.pool.master
    info["control"] = f"{master.url}_simulator/control"
    info["control_token"] = sim.world.control_token
    if args.json:
        print(json.dumps(info), flush=True)
    else:
        print(f"XAPI simulator running; state in {info['state_dir']}")
        print(f"credentials: {info['username']} / {info['password']}")
        for p in info["pools"]:
            print(f"{p['name']}: master {p['master']}")
            for h in p["hosts"]:
                role = "master" if h["master"] else "member"
                print(f"  {h['name']:<16} {h['url']:<28} {role:<7} uuid {h['uuid']}")
        print("Press Ctrl-C to stop.", flush=True)
    done = threading.Event()

    def stop(*_: object) -> None:
        done.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while not done.wait(1.0):
            pass
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
