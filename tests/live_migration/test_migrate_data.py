"""The migrate data deserializes in an unmodified Nova that never imports this package.

nova-conductor and the RPC layer handle the migrate data between the two
computes; a stock conductor has no xenapi_driver installed. The compute side
(this process) builds the object; a child interpreter that imports only Nova
deserializes it, proves xenapi_driver was never imported, backports it to the
version an older peer would ask for, and sends it back; the source compute then
reads every fact from it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from lm_helpers import Side, make_guest, make_instance

from xenapi_driver.live_migration import SESSION_PLACEHOLDER, XenAPIMigrateData
from xenapi_driver.simulator import api

CHILD = textwrap.dedent(
    """
    import json, sys
    from nova import objects
    from nova.objects import base
    objects.register_all()
    primitive = json.load(sys.stdin)
    data = base.NovaObject.obj_from_primitive(primitive)
    assert type(data).__module__ == "nova.objects.migrate_data", type(data)
    assert not [m for m in sys.modules if m.startswith("xenapi_driver") or m == "nova.virt.xenapi"]
    # what the conductor's serializer sends on
    json.dump({"class": type(data).__name__, "repr": repr(data),
               "primitive": base.NovaObjectSerializer().serialize_entity(None, data)}, sys.stdout)
    """
)


def test_migrate_data_round_trips_through_a_nova_without_the_driver():
    sim = api.start(hosts=[1, 1])
    src, dst = Side(sim, sim.pools[0].hosts[0]), Side(sim, sim.pools[1].hosts[0])
    try:
        instance = make_instance()
        make_guest(sim, src.host, instance, src.host.local_sr, running=False)
        data = dst.ops.check_can_live_migrate_destination(None, instance, {}, {}, None, False)
        secret = XenAPIMigrateData.receive_map(data)["session_id"]
        assert secret and SESSION_PLACEHOLDER in data.filename and secret not in data.filename
        primitive = data.obj_to_primitive()
        child = subprocess.run(
            [sys.executable, "-c", CHILD],
            input=json.dumps(primitive),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert child.returncode == 0, child.stderr[-3000:]
        out = json.loads(child.stdout)
        assert out["class"] == "LibvirtLiveMigrateData"
        # Nova logs migrate data at debug level: the session id is masked
        assert secret not in out["repr"] and "secret=***" in out["repr"]
        from nova.objects import base

        back = base.NovaObject.obj_from_primitive(out["primitive"])
        facts = XenAPIMigrateData.facts(back)
        assert facts["host_uuid"] == dst.host.uuid
        assert XenAPIMigrateData.receive_map(back)["session_id"] == secret
        # and the source compute accepts it: XAPI's assert_can_migrate passes
        checked = src.ops.check_can_live_migrate_source(None, instance, back)
        assert checked.is_shared_block_storage is False
    finally:
        src.close()
        dst.close()
        sim.stop()
