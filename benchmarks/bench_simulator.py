#!/usr/bin/env python3
"""Benchmarks of the XAPI simulator, as ratios to a baseline measured in the same run.

Why: absolute numbers depend on the machine; what matters is how much the
simulator costs over the cheapest possible XML-RPC round trip on the same
loopback.  The baseline is a trivial XML-RPC echo server (standard
library, keep-alive, no Nagle delay) called with ``xmlrpc.client``.

Measured, all with the real ``XenAPI`` SDK over HTTP on loopback:

* ``VM.get_record`` calls per second;
* ``VM.get_all_records`` with 10 and with 1000 VMs (seconds per call), as
  a ratio to the baseline server returning the same records canned (so
  the ratio is the simulator's own cost, not the SDK's XML parsing);
* ``VM.get_all_records_where`` on a database column (``name__label``)
  matching one of 1000 VMs, as a ratio to ``VM.get_record`` (the cost of
  filtering on the server);
* event delivery latency: from a client's ``VM.set_name_label`` to the
  ``event.from`` of another client returning it.

Usage: ``python benchmarks/bench_simulator.py [--quick] [--json]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
import xmlrpc.client
from pathlib import Path
from socketserver import ThreadingMixIn
from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import XenAPI  # noqa: E402

from xenapi_driver.simulator import api  # noqa: E402


class _EchoHandler(SimpleXMLRPCRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args) -> None:
        pass


class _EchoServer(ThreadingMixIn, SimpleXMLRPCServer):
    daemon_threads = True


class Baseline:
    """A trivial XML-RPC server: ``echo`` returns its argument, ``canned`` a fixed payload."""

    def __init__(self) -> None:
        self.payload: object = ""
        self.server = _EchoServer(("127.0.0.1", 0), requestHandler=_EchoHandler, logRequests=False)
        self.server.register_function(lambda *a: {"Status": "Success", "Value": a[-1] if a else ""}, "echo")
        self.server.register_function(lambda *a: {"Status": "Success", "Value": self.payload}, "canned")
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.proxy = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{self.server.server_address[1]}/")

    def echo(self, n: int) -> float:
        """Seconds per call of the echo over loopback."""
        return per_call(lambda: self.proxy.echo("OpaqueRef:x"), n)

    def canned(self, payload: object, n: int) -> float:
        """Seconds per call returning ``payload`` (same size as the simulator's answer)."""
        self.payload = payload
        return per_call(self.proxy.canned, n)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def per_call(fn, n: int) -> float:
    for _ in range(min(10, n)):
        fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def add_vms(sim, count: int) -> None:
    db = sim.pool.db
    with db.lock:
        for i in range(count):
            db.create("VM", name_label=f"bench-{i}", memory_static_max=1024**3, VCPUs_max=1,
                      other_config={"nova_uuid": f"{i:08d}"})  # fmt: skip


def event_latency(sim, session_a, session_b, rounds: int) -> list[float]:
    vm = session_a.xenapi.VM.get_all()[0]
    token = session_b.xenapi.event_from(["vm"], "", 0.0)["token"]
    samples = []
    for i in range(rounds):
        got = threading.Event()
        box: dict = {}

        def waiter(tok=token, box=box, got=got):
            box["out"] = session_b.xenapi.event_from(["vm"], tok, 30.0)
            box["t"] = time.perf_counter()
            got.set()

        t = threading.Thread(target=waiter)
        t.start()
        time.sleep(0.01)  # let the waiter block in event.from
        start = time.perf_counter()
        session_a.xenapi.VM.set_name_label(vm, f"bench-event-{i}")
        if not got.wait(30):
            raise RuntimeError("event not delivered within 30 s")
        t.join(5)
        samples.append(box["t"] - start)
        token = box["out"]["token"]
    return samples


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    ap.add_argument("--json", action="store_true", help="print results as JSON")
    args = ap.parse_args(argv)
    n = 200 if args.quick else 2000
    baseline = Baseline()
    base = baseline.echo(n)
    results: dict[str, float] = {"baseline_echo_s": base}
    with api.start(hosts=1) as sim:
        a = XenAPI.Session(sim.url)
        a.xenapi.login_with_password(sim.username, sim.password, "1.0", "bench-a")
        b = XenAPI.Session(sim.url)
        b.xenapi.login_with_password(sim.username, sim.password, "1.0", "bench-b")
        vm = a.xenapi.VM.get_all()[0]
        t = per_call(lambda: a.xenapi.VM.get_record(vm), n)
        results["VM.get_record_calls_per_s"] = 1 / t
        results["VM.get_record_ratio_to_echo"] = t / base
        add_vms(sim, 9)
        t10 = per_call(a.xenapi.VM.get_all_records, max(20, n // 10))
        c10 = baseline.canned(a.xenapi.VM.get_all_records(), max(20, n // 10))
        results["get_all_records_10_s"] = t10
        results["get_all_records_10_ratio_to_canned"] = t10 / c10
        add_vms(sim, 990)
        reps = 5 if args.quick else 20
        t1000 = per_call(a.xenapi.VM.get_all_records, reps)
        c1000 = baseline.canned(a.xenapi.VM.get_all_records(), reps)
        results["get_all_records_1000_s"] = t1000
        results["get_all_records_1000_ratio_to_canned"] = t1000 / c1000
        label = a.xenapi.VM.get_name_label(vm)
        where = f'field "name__label" = "{label}" and field "is_control_domain" = "true"'
        tw = per_call(lambda: a.xenapi.VM.get_all_records_where(where), reps * 4)
        results["get_all_records_where_1000_s"] = tw
        results["get_all_records_where_1000_ratio_to_get_record"] = tw / t
        lat = event_latency(sim, a, b, 10 if args.quick else 50)
        med = statistics.median(lat)
        results["event_latency_median_s"] = med
        results["event_latency_ratio_to_echo"] = med / base
        a.xenapi.session.logout()
        b.xenapi.session.logout()
    baseline.stop()
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"baseline XML-RPC echo:         {base * 1e6:9.1f} us/call")
        print(
            f"VM.get_record (SDK):           {results['VM.get_record_calls_per_s']:9.0f} calls/s"
            f"  ({results['VM.get_record_ratio_to_echo']:.1f}x echo)"
        )
        print(
            f"VM.get_all_records, 10 VMs:    {t10 * 1e3:9.2f} ms/call  ({t10 / c10:.2f}x a canned"
            " answer of the same size)"
        )
        print(
            f"VM.get_all_records, 1000 VMs:  {t1000 * 1e3:9.2f} ms/call  ({t1000 / c1000:.2f}x a canned"
            " answer of the same size)"
        )
        print(f"get_all_records_where, 1000:   {tw * 1e3:9.2f} ms/call  ({tw / t:.1f}x VM.get_record)")
        print(f"event delivery latency median: {med * 1e3:9.2f} ms       ({med / base:.1f}x echo)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
