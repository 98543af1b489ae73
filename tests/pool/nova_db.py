"""Nova's real API database (SQLite in memory) for aggregate objects in tests.

Aggregates live in Nova's API database. The pool code reads and writes them
only through ``nova.objects`` (in a real deployment those calls go through
nova-conductor); here the objects talk to a migrated in-memory database, so
the same object code and SQL run. Notifications go to oslo.messaging's noop
driver over the fake transport.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import nova.conf
import oslo_messaging

from nova import context as nova_context
from nova import objects, rpc

CONF = nova.conf.CONF
_lock = threading.Lock()
_ready = False


def setup() -> None:
    """Create and migrate the API database once per process (idempotent)."""
    global _ready
    with _lock:
        if _ready:
            return
        from nova.db import migration
        from nova.db.api import api as api_db_api

        objects.register_all()
        rpc.set_defaults("nova")
        oslo_messaging.get_notification_transport(CONF, url="fake:/")
        CONF.set_override("transport_url", "fake:/")
        CONF.set_override("driver", ["noop"], group="oslo_messaging_notifications")
        CONF.set_override("connection", "sqlite://", group="api_database")
        api_db_api.configure(CONF)
        if rpc.TRANSPORT is None:
            rpc.init(CONF)
        migration.db_sync(database="api")
        _ready = True


def admin_context() -> Any:
    setup()
    return nova_context.get_admin_context()


def create_pool_aggregate(ctx: Any, name: str | None = None, zone: str = "xenpool-az") -> Any:
    """What ``openstack aggregate create --zone Z NAME`` then ``aggregate set
    --property hypervisor_pool=true --property operational_state=created`` produce."""
    agg = objects.Aggregate(
        ctx, name=name or f"pool-{uuid.uuid4().hex[:8]}", metadata={"availability_zone": zone}
    )
    agg.create()
    agg.update_metadata({"hypervisor_pool": "true", "operational_state": "created"})
    return agg


def reload(ctx: Any, agg: Any) -> Any:
    return objects.Aggregate.get_by_id(ctx, agg.id)
