#!/usr/bin/env python3
"""XAPI calls per XenAPIDriver operation, at 10 and at 1000 existing VMs.

Why: a compute driver's cost on a busy pool is dominated by round trips to
the pool master, and Nova calls get_info, list_instances and
update_provider_tree periodically for every instance. Counting the calls the
simulator received (its own counters) is machine-independent; the time of
list_instances at 1000 VMs is reported as a ratio to the same call at 10 VMs,
measured in the same run.

Goals (issue 6): get_info and list_instances 1 call; update_provider_tree the
same count at 1000 VMs as at 10; spawn at most 15 calls beyond the disk copy
(the image layer's VDI.create here, as the image layer is a later issue).

Background calls are not an operation's cost and are left out: the
power-state watcher's event.from long-poll and pooled-session logins.

Usage: ``python benchmarks/bench_driver.py [--json] [--check]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nova.conf  # noqa: E402
from nova.compute import provider_tree  # noqa: E402
from nova.network import model as network_model  # noqa: E402

from nova import objects  # noqa: E402
from nova.virt import fake  # noqa: E402
from xenapi_driver.driver import XenAPIDriver  # noqa: E402
from xenapi_driver.simulator import api  # noqa: E402

CONF = nova.conf.CONF
GiB = 1024**3
BACKGROUND = {"event.from", "session.login_with_password", "session.logout"}
SIZES = (10, 1000)


class BlankImageSource:
    """The image layer's place: one blank root VDI (the 'disk copy')."""

    def __init__(self, session: Any) -> None:
        self.session = session

    def root_vdi(self, context: Any, instance: Any, image_meta: Any, sr_ref: str) -> str:
        return self.session.call_xenapi(
            "VDI.create",
            {
                "name_label": f"image for {instance.name}",
                "SR": sr_ref,
                "virtual_size": str(GiB),
                "type": "user",
                "sharable": False,
                "read_only": False,
                "other_config": {},
            },
        )


_ids = iter(range(1, 10_000_000))


def make_instance() -> objects.Instance:
    inst = objects.Instance(
        id=next(_ids), uuid=str(uuid.uuid4()), memory_mb=256, vcpus=1, root_gb=1, ephemeral_gb=0, metadata={}
    )
    inst.flavor = objects.Flavor(
        flavorid="b", name="b", memory_mb=256, vcpus=1, root_gb=1, ephemeral_gb=0, swap=0, extra_specs={}
    )
    return inst


def seed(sim: Any, host: Any, count: int) -> list[objects.Instance]:
    """``count`` running instance VMs on ``host``, put straight into the pool's database."""
    db = sim.pools[0].db
    instances = []
    for _ in range(count):
        inst = make_instance()
        db.create(
            "VM",
            name_label=inst.name,
            is_a_template=False,
            power_state="Running",
            resident_on=host.ref,
            affinity=host.ref,
            other_config={"nova_uuid": inst.uuid},
            memory_static_max=256 * 1024**2,
            memory_dynamic_max=256 * 1024**2,
            memory_dynamic_min=256 * 1024**2,
            memory_static_min=256 * 1024**2,
            VCPUs_max=1,
            VCPUs_at_startup=1,
        )
        instances.append(inst)
    return instances


def calls(sim: Any, fn: Any) -> tuple[int, dict[str, int], float]:
    sim.reset_call_counts()
    started = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - started
    counts = {m: n for m, n in sim.call_counts.items() if m not in BACKGROUND and n}
    return sum(counts.values()), counts, elapsed


def measure(existing: int) -> dict[str, Any]:
    # Room for 1000 small running VMs (256 MiB each) and one more.
    with api.start(hosts=1, host_memory=512 * GiB) as sim:
        host = sim.pools[0].hosts[0]
        for name, value in (
            ("connection_url", host.url),
            ("connection_username", sim.username),
            ("connection_password", sim.password),
        ):
            CONF.set_override(name, value, group="xenserver")
        drv = XenAPIDriver(fake.FakeVirtAPI())
        drv.init_host("bench")
        try:
            drv.vmops.image_source = BlankImageSource(drv._session)
            instances = seed(sim, host, existing)
            node = drv.get_available_nodes()[0]
            tree = provider_tree.ProviderTree()
            tree.new_root(node, str(uuid.uuid4()))
            drv.update_provider_tree(tree, node)  # warm: the SR is chosen once

            result: dict[str, Any] = {"existing_vms": existing}
            n, detail, secs = calls(sim, drv.list_instances)
            result["list_instances"] = n
            result["list_instances_seconds"] = secs
            # Nova's periodic sync lists first, then asks each instance.
            result["get_info"], _, _ = calls(sim, lambda: drv.get_info(instances[existing // 2]))
            result["update_provider_tree"], _, _ = calls(sim, lambda: drv.update_provider_tree(tree, node))
            result["get_available_resource"], _, _ = calls(sim, lambda: drv.get_available_resource(node))

            new = make_instance()
            nic = network_model.VIF(
                id=str(uuid.uuid4()),
                address="fa:16:3e:00:00:01",
                network=network_model.Network(id="n", bridge="xenbr0", label="net", subnets=[], meta={}),
            )
            meta = objects.ImageMeta.from_dict({"properties": {}})
            total, detail, _ = calls(
                sim,
                lambda: drv.spawn(None, new, meta, [], "", {}, network_info=network_model.NetworkInfo([nic])),
            )
            result["spawn_total"] = total
            result["spawn_beyond_disk_copy"] = total - 1  # the image layer's VDI.create
            result["spawn_detail"] = detail
            result["destroy"], result["destroy_detail"], _ = calls(sim, lambda: drv.destroy(None, new, None))
            return result
        finally:
            drv.cleanup_host("bench")
            for name in ("connection_url", "connection_username", "connection_password"):
                CONF.clear_override(name, group="xenserver")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    args = parser.parse_args(argv)
    objects.register_all()

    runs = {size: measure(size) for size in SIZES}
    small, large = runs[SIZES[0]], runs[SIZES[-1]]
    goals = {
        "get_info is 1 call": all(r["get_info"] == 1 for r in runs.values()),
        "list_instances is 1 call": all(r["list_instances"] == 1 for r in runs.values()),
        "update_provider_tree independent of VM count": small["update_provider_tree"]
        == large["update_provider_tree"],
        "spawn <= 15 calls beyond the disk copy": all(
            r["spawn_beyond_disk_copy"] <= 15 for r in runs.values()
        ),
    }
    ratio = large["list_instances_seconds"] / max(small["list_instances_seconds"], 1e-9)
    report = {"runs": runs, "list_instances_time_ratio_1000_to_10": ratio, "goals": goals}
    if args.json:
        print(json.dumps(report, indent=1, sort_keys=True))
    else:
        keys = ["get_info", "list_instances", "update_provider_tree", "get_available_resource",
                "spawn_beyond_disk_copy", "destroy"]  # fmt: skip
        print(f"{'XAPI calls':<26}" + "".join(f"{size:>8} VMs" for size in SIZES))
        for key in keys:
            print(f"{key:<26}" + "".join(f"{runs[size][key]:>12}" for size in SIZES))
        print(f"list_instances time, 1000 VMs / 10 VMs: {ratio:.1f}x (one call; the payload grows)")
        for goal, met in goals.items():
            print(f"{'met ' if met else 'MISSED'}  {goal}")
    return 0 if (all(goals.values()) or not args.check) else 1


if __name__ == "__main__":
    sys.exit(main())
