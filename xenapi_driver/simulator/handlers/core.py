"""Core explicit messages: sessions, events, tasks, host and pool basics.

Why: these are the messages every client uses before it does anything
else (login, event.from, polling tasks, host.call_plugin), so they live
with the simulator core.  VM, storage, migration and pool membership are
in their own modules.
"""

from __future__ import annotations

import time

from .. import sessions, tasks
from ..context import CallContext
from ..errors import XapiError
from ..implicit import snapshot
from ..registry import http_handler, message
from ..schema import NULL_REF
from ..wire import Int32, now

# -- session ---------------------------------------------------------------------------


@message("session.login_with_password")
def login_with_password(ctx: CallContext, uname: str, pwd: str, version: str, originator: str) -> str:
    return sessions.login(ctx.pool, ctx.sim_host, uname, pwd, originator)


@message("session.slave_local_login_with_password")
def slave_local_login_with_password(ctx: CallContext, uname: str, pwd: str) -> str:
    return sessions.login(ctx.pool, ctx.sim_host, uname, pwd, "", local=True)


@message("session.logout")
def logout(ctx: CallContext) -> None:
    sessions.logout(ctx.pool, ctx.session)


@message("session.local_logout")
def local_logout(ctx: CallContext) -> None:
    sessions.logout(ctx.pool, ctx.session)


@message("session.change_password")
def change_password(ctx: CallContext, old_pwd: str, new_pwd: str) -> None:
    if old_pwd != ctx.pool.password:
        raise XapiError("SESSION_AUTHENTICATION_FAILED", ctx.user, "Authentication failure")
    if not new_pwd:
        raise XapiError("INVALID_VALUE", "new_pwd", "")
    ctx.pool.password = new_pwd


@message("session.get_all_subject_identifiers")
def get_all_subject_identifiers(ctx: CallContext) -> list:
    return []


@message("session.logout_subject_identifier")
def logout_subject_identifier(ctx: CallContext, subject_identifier: str) -> None:
    return None


# -- task ------------------------------------------------------------------------------


@message("task.create")
def task_create(ctx: CallContext, label: str, description: str) -> str:
    return tasks.create(ctx.db, label, description, ctx.host)


@message("task.destroy")
def task_destroy(ctx: CallContext, task: str) -> None:
    ctx.db.destroy("task", task)


@message("task.cancel")
def task_cancel(ctx: CallContext, task: str) -> None:
    tasks.cancel(ctx.db, task)


@message("task.set_status")
def task_set_status(ctx: CallContext, task: str, value: str) -> None:
    with ctx.db.lock:
        ctx.db.get("task", task)
        fields: dict = {"status": value}
        if value in tasks.FINISHED:
            fields.update(finished=now(), allowed_operations=[])
            if value == "success":
                fields["progress"] = 1.0
        ctx.db.update("task", task, **fields)


@message("task.set_progress")
def task_set_progress(ctx: CallContext, task: str, value: float) -> None:
    ctx.db.set("task", task, "progress", value)


@message("task.set_result")
def task_set_result(ctx: CallContext, task: str, value: str) -> None:
    ctx.db.set("task", task, "result", value)


@message("task.set_error_info")
def task_set_error_info(ctx: CallContext, task: str, value: list) -> None:
    ctx.db.set("task", task, "error_info", value)


# -- event -----------------------------------------------------------------------------


def _parse_token(token: str) -> int:
    """XAPI's token is ``"<generation>,<message generation>"`` (or ``""``)."""
    if token == "":
        return 0
    parts = token.split(",")
    try:
        if len(parts) != 2:
            raise ValueError(token)
        first, _ = int(parts[0]), int(parts[1])
    except ValueError:
        raise XapiError("EVENT_FROM_TOKEN_PARSE_FAILURE", token) from None
    return first


def _subscription(ctx: CallContext, classes: list[str]) -> tuple[set[str] | None, set[tuple[str, str]]]:
    schema = ctx.db.schema
    wanted: set[str] = set()
    objects: set[tuple[str, str]] = set()
    everything = False
    for text in classes:
        if text == "*":
            everything = True
            continue
        if "/" in text:
            cname, _, ref = text.partition("/")
            cls = schema.canonical_class(cname)
            if cls is not None:
                objects.add((cls, ref))
            continue
        cls = schema.canonical_class(text)
        if cls is not None:  # XAPI ignores classes it does not know
            wanted.add(cls)
    return (None if everything else wanted), objects


def _token(gen: int) -> str:
    return f"{gen:020d},{0:020d}"


def _event(db, gen: int, op: str, cls: str, ref: str) -> dict:
    ev = {"id": str(gen), "timestamp": "0.0", "class": cls.lower(), "operation": op, "ref": ref}
    if op != "del":
        ev["snapshot"] = snapshot(db.get(cls, ref))
    return ev


@message("event.from")
def event_from(ctx: CallContext, classes: list, token: str, timeout: float) -> dict:
    """Changes since ``token``: one event per object (add, mod or del), blocking up to ``timeout``."""
    since = _parse_token(token)
    wanted, objects = _subscription(ctx, classes)
    db = ctx.db
    deadline = time.monotonic() + max(0.0, min(float(timeout), 3600.0))
    with db.lock:
        while True:
            changes, _lost = db.changes_since(since, wanted, objects)
            gen = db.generation
            if changes or not db.wait_changed(gen, deadline):
                if not changes:
                    changes, _lost = db.changes_since(since, wanted, objects)
                    gen = db.generation
                break
            # woken by a change: a logout or toolstack restart ends the wait, as in XAPI
            if ctx.world.stopped:
                raise XapiError("INTERNAL_ERROR", "the simulator is stopping")
            if ctx.session and ctx.session not in ctx.pool.sessions.infos:
                raise XapiError("SESSION_INVALID", ctx.session)
            ctx.check_cancelled()
        events = [_event(db, g, op, cls, ref) for g, op, cls, ref in changes]
        # XAPI counts the objects of every class, whatever the subscription
        counts = {cls.lower(): Int32(db.count(cls)) for cls in db.schema.classes}
        return {"events": events, "valid_ref_counts": counts, "token": _token(gen)}


@message("event.get_current_id")
def event_get_current_id(ctx: CallContext) -> int:
    return ctx.db.generation


@message("event.inject")
def event_inject(ctx: CallContext, cls: str, ref: str) -> str:
    canonical = ctx.db.schema.canonical_class(cls)
    if canonical is None:
        raise XapiError("HANDLE_INVALID", cls, ref)
    with ctx.db.lock:
        ctx.db.touch(canonical, ref)
        return _token(ctx.db.generation - 1)


def _session_info(ctx: CallContext) -> sessions.SessionInfo:
    return sessions.validate(ctx.pool, ctx.session)


@message("event.register")
def event_register(ctx: CallContext, classes: list) -> None:
    info = _session_info(ctx)
    with ctx.db.lock:
        if info.registered is None:
            info.registered = set()
            info.event_since = ctx.db.generation
        info.registered.update(c.lower() for c in classes)


@message("event.unregister")
def event_unregister(ctx: CallContext, classes: list) -> None:
    info = _session_info(ctx)
    if info.registered is not None:
        info.registered.difference_update(c.lower() for c in classes)


@message("event.next")
def event_next(ctx: CallContext) -> list:
    """Legacy blocking event API; waits up to 30 s per call."""
    info = _session_info(ctx)
    if info.registered is None:
        raise XapiError("SESSION_NOT_REGISTERED", ctx.session)
    db = ctx.db
    deadline = time.monotonic() + 30.0
    with db.lock:
        while True:
            wanted, objects = _subscription(ctx, sorted(info.registered))
            changes, lost = db.changes_since(info.event_since, wanted, objects)
            if lost:
                info.event_since = db.generation
                raise XapiError("EVENTS_LOST")
            if changes or not db.wait_changed(db.generation, deadline):
                break
        info.event_since = db.generation
        return [_event(db, g, op, cls, ref) for g, op, cls, ref in changes]


# -- host basics -------------------------------------------------------------------------


@message("host.call_plugin")
def host_call_plugin(ctx: CallContext, host: str, plugin: str, fn: str, args: dict) -> str:
    target = ctx.host_obj(host)
    if not target.powered:
        raise XapiError("HOST_OFFLINE", host)
    if target.sandbox is None:
        raise XapiError("XENAPI_MISSING_PLUGIN", plugin)
    return target.sandbox.call_plugin(plugin, fn, dict(args), ctx.session or NULL_REF)


@message("host.get_servertime")
def host_get_servertime(ctx: CallContext, host: str) -> object:
    ctx.db.get("host", host)
    return now()


@message("host.get_server_localtime")
def host_get_server_localtime(ctx: CallContext, host: str) -> object:
    ctx.db.get("host", host)
    return now()


@message("host.get_server_certificate")
def host_get_server_certificate(ctx: CallContext, host: str) -> str:
    ctx.db.get("host", host)
    path = ctx.world.root / "tls" / "cert.pem"
    return path.read_text() if path.exists() else ""


@message("host.compute_free_memory")
def host_compute_free_memory(ctx: CallContext, host: str) -> int:
    with ctx.db.lock:
        metrics = ctx.db.get("host", host)["metrics"]
        return int(ctx.db.get("host_metrics", metrics)["memory_free"])


@message("host.compute_memory_overhead")
def host_compute_memory_overhead(ctx: CallContext, host: str) -> int:
    return int(ctx.db.get("host", host)["memory_overhead"])


@message("host.restart_agent")
def host_restart_agent(ctx: CallContext, host: str) -> None:
    ctx.db.get("host", host)
    target = ctx.host_obj(host)
    if target.is_master:
        # answer first, then drop every session, as a real restart would
        import threading

        threading.Timer(0.05, ctx.pool.restart_toolstack).start()


@message("host.dmesg")
def host_dmesg(ctx: CallContext, host: str) -> str:
    ctx.db.get("host", host)
    return "simulated host: no kernel messages\n"


@message("host.get_log")
def host_get_log(ctx: CallContext, host: str) -> str:
    ctx.db.get("host", host)
    return ""


@message("host.list_methods")
def host_list_methods(ctx: CallContext) -> list:
    return sorted(f"{c}.{m}" for c, info in ctx.db.schema.classes.items() for m in info.messages)


@message("host.get_management_interface")
def host_get_management_interface(ctx: CallContext, host: str) -> str:
    for ref in ctx.db.find("PIF", host=host, management=True):
        return ref
    return NULL_REF


# -- message (alerts) -------------------------------------------------------------------


@message("message.create")
def message_create(ctx: CallContext, name: str, priority: int, cls: str, obj_uuid: str, body: str) -> str:
    return ctx.db.create(
        "message", name=name, priority=priority, cls=cls, obj_uuid=obj_uuid, timestamp=now(), body=body
    )


def _messages_where(ctx: CallContext, pred) -> dict:
    from ..implicit import all_records

    return all_records(ctx, "message", pred)


@message("message.get_since")
def message_get_since(ctx: CallContext, since: object) -> dict:
    return _messages_where(ctx, lambda rec: str(rec["timestamp"]) > str(since))


@message("message.get")
def message_get(ctx: CallContext, cls: str, obj_uuid: str, since: object) -> dict:
    return _messages_where(
        ctx,
        lambda rec: rec["cls"] == cls and rec["obj_uuid"] == obj_uuid and str(rec["timestamp"]) > str(since),
    )


@message("message.destroy_many")
def message_destroy_many(ctx: CallContext, messages: list) -> None:
    with ctx.db.lock:
        for ref in messages:
            ctx.db.destroy("message", ref)


# -- pool basics ---------------------------------------------------------------------------


@message("pool.sync_database")
def pool_sync_database(ctx: CallContext) -> None:
    return None


@message("pool.get_license_state")
def pool_get_license_state(ctx: CallContext, pool: str) -> dict:
    ctx.db.get("pool", pool)
    return {"edition": "xenserver-premium", "expiry": "never"}


# -- simulator control (used by api.RemoteSimulator) -------------------------------------


def _control_host(world, name: str):
    return next(h for h in world.all_hosts() if name in (h.uuid, h.ref, h.name, h.address))


@http_handler("POST", "/_simulator/control", auth=False)
def simulator_control(ctx: CallContext, request) -> None:
    """Steer a simulator running in another process; needs the world's control token."""
    import hmac
    import json

    try:
        body = json.loads(request.read_body() or b"{}")
    except ValueError:
        request.respond(400, "bad JSON", "text/plain")
        return
    world = ctx.world
    if not hmac.compare_digest(str(body.get("token", "")), world.control_token):
        request.respond(403, json.dumps({"ok": False, "error": "bad control token"}), "application/json")
        return
    op = body.get("op")
    value = None
    try:
        if op == "fail_next":
            world.faults.fail_next(
                body["method"], body["code"], *body.get("params", []), count=body.get("count", 1)
            )
        elif op == "latency":
            world.faults.add_latency(float(body["seconds"]))
        elif op == "drop":
            world.faults.drop_connections(int(body.get("count", 1)), body.get("method", "*"))
        elif op == "clear_faults":
            world.faults.clear()
        elif op == "call_counts":
            value = dict(world.call_counts)
        elif op == "reset_call_counts":
            world.call_counts.clear()
        elif op == "reset":
            world.reset()
        elif op == "restart_toolstack":
            index = body.get("pool")
            for p in world.pools if index is None else [world.pools[int(index)]]:
                p.restart_toolstack()
        elif op == "agent_enabled":
            from . import xenstore

            xenstore.set_agent_enabled(_control_host(world, body["host"]), bool(body["enabled"]))
        elif op == "create_lun":
            from .. import sr_backend

            lun, size = int(body["lun"]), int(body["size"])
            value = sr_backend.create_lun(world.iscsi_root, body["target_iqn"], lun, size)
        elif op in ("power_off", "power_on"):
            host = _control_host(world, body["host"])
            if host is ctx.sim_host and op == "power_off":
                import threading

                threading.Timer(0.05, host.power_off).start()
            else:
                (host.power_off if op == "power_off" else host.power_on)()
        else:
            raise ValueError(f"unknown op {op!r}")
    except (KeyError, ValueError, IndexError, StopIteration) as e:
        request.respond(
            200, json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}), "application/json"
        )
        return
    request.respond(200, json.dumps({"ok": True, "value": value}), "application/json")
