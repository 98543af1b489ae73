"""Implicit messages from the schema alone, and get_all_records_where."""

from __future__ import annotations

import pytest

NET = {"name_label": "", "name_description": "", "MTU": "1500", "other_config": {}, "bridge": "",
       "managed": True, "tags": []}  # fmt: skip


@pytest.fixture
def net(xapi):
    ref = xapi.network.create(dict(NET, name_label="implicit-net"))
    yield ref
    try:
        xapi.network.destroy(ref)
    except Exception:  # noqa: BLE001 - a test may have destroyed it
        pass


def test_get_set_fields(xapi, net):
    assert xapi.network.get_name_label(net) == "implicit-net"
    xapi.network.set_name_label(net, "renamed")
    assert xapi.network.get_record(net)["name_label"] == "renamed"
    assert xapi.network.get_by_name_label("renamed") == [net]
    uuid = xapi.network.get_uuid(net)
    assert xapi.network.get_by_uuid(uuid) == net
    assert net in xapi.network.get_all()
    assert xapi.network.get_all_records()[net]["uuid"] == uuid


def test_map_add_remove_and_duplicate_key(xapi, net, failure):
    xapi.network.add_to_other_config(net, "k", "v")
    assert xapi.network.get_other_config(net) == {"k": "v"}
    assert failure(xapi.network.add_to_other_config, net, "k", "w") == [
        "MAP_DUPLICATE_KEY",
        "network",
        "other_config",
        net,
        "k",
    ]
    xapi.network.remove_from_other_config(net, "k")
    xapi.network.remove_from_other_config(net, "absent")  # no error, as in XAPI
    assert xapi.network.get_other_config(net) == {}
    xapi.network.set_other_config(net, {"a": "1", "b": "2"})
    assert xapi.network.get_other_config(net) == {"a": "1", "b": "2"}


def test_set_add_remove(xapi, net):
    xapi.network.add_tags(net, "red")
    xapi.network.add_tags(net, "red")
    xapi.network.add_tags(net, "blue")
    assert sorted(xapi.network.get_tags(net)) == ["blue", "red"]
    xapi.network.remove_tags(net, "red")
    assert xapi.network.get_tags(net) == ["blue"]


def test_create_requires_fields_without_defaults(xapi, failure):
    assert failure(xapi.network.create, {"name_label": "x"})[0] == "FIELD_TYPE_ERROR"


def test_create_ignores_runtime_fields_and_destroy(xapi, failure):
    ref = xapi.network.create(dict(NET, name_label="x", VIFs=["OpaqueRef:bogus"]))
    assert xapi.network.get_VIFs(ref) == []
    xapi.network.destroy(ref)
    assert failure(xapi.network.get_record, ref) == ["HANDLE_INVALID", "network", ref]


def test_relations_are_kept_both_ways(xapi, sim):
    host = sim.pool.master.ref
    pifs = xapi.host.get_PIFs(host)
    assert len(pifs) == 1
    assert xapi.PIF.get_host(pifs[0]) == host
    assert len(xapi.host.get_host_CPUs(host)) == sim.world.host_cpus
    assert sim.pool.master.local_sr in [xapi.PBD.get_SR(p) for p in xapi.host.get_PBDs(host)]


def test_get_all_records_where(xapi, sim):
    vms = xapi.VM.get_all_records_where('field "is_control_domain"="true"')
    assert len(vms) == 3
    assert all(r["is_control_domain"] for r in vms.values())
    none = xapi.VM.get_all_records_where('field "is_control_domain"="true" and not field "domid"="0"')
    assert none == {}
    master = sim.pool.master.ref
    either = xapi.VM.get_all_records_where(
        f'field "resident_on"="{master}" or '
        '(field "is_a_template"="true" and field "is_control_domain"="false")'
    )
    assert [r["resident_on"] for r in either.values()] == [master]
    # exact string comparison on the database form: enums as the datamodel spells them
    assert len(xapi.VM.get_all_records_where('field "power_state"="Running"')) == 3
    assert xapi.VM.get_all_records_where('field "power_state"="running"') == {}
    assert xapi.VM.get_all_records_where("false") == {}
    assert len(xapi.SR.get_all_records_where('field "type"="ext"')) == 3
    assert len(xapi.SR.get_all_records_where('field "shared" = "true" and field "content_type"="iso"')) == 1


def test_get_all_records_where_bad_expression(xapi, failure):
    # XAPI: a missing column is DBCache_NotFound -> INTERNAL_ERROR ["missing field", column, ""]
    details = failure(xapi.VM.get_all_records_where, 'field "no_such_field"="x"')
    assert details[:3] == ["INTERNAL_ERROR", "missing field", "no_such_field"]
    # a malformed expression is Db_filter.Expression_error -> INVALID_VALUE [expr, why]
    details = failure(xapi.VM.get_all_records_where, 'field "name__label"=')
    assert details[:2] == ["INVALID_VALUE", 'field "name__label"=']


def test_where_uses_database_column_names(xapi, failure, net):
    """XAPI's Db_filter reads database columns: namespaced fields are joined with ``__``."""
    xapi.network.set_name_description(net, "where-desc")
    assert list(xapi.network.get_all_records_where('field "name__label" = "implicit-net"')) == [net]
    assert list(xapi.network.get_all_records_where('field "name__description" = "where-desc"')) == [net]
    # the API spelling of a namespaced field is no column: XAPI fails, naming the column to use
    details = failure(xapi.network.get_all_records_where, 'field "name_label" = "implicit-net"')
    assert details[:3] == ["INTERNAL_ERROR", "missing field", "name_label"]
    assert "name__label" in details[3]
    # flat fields keep their one spelling; a made-up __ spelling is no column either
    both = 'field "MTU" = "1500" and field "name__label" = "implicit-net"'
    assert list(xapi.network.get_all_records_where(both)) == [net]
    assert failure(xapi.VM.get_all_records_where, 'field "is__a_template" = "true"')[1] == "missing field"
    # other namespaces: memory, VCPUs, HVM, PV, actions on VM; API_version on host; qos on VIF/VBD
    vms = xapi.VM.get_all_records_where('field "is_control_domain" = "true"')
    ref, rec = next(iter(vms.items()))
    for field, column in [("memory_static_max", "memory__static_max"), ("VCPUs_max", "VCPUs__max"),
                          ("HVM_boot_policy", "HVM__boot_policy"), ("PV_args", "PV__args"),
                          ("actions_after_crash", "actions__after_crash")]:  # fmt: skip
        found = xapi.VM.get_all_records_where(f'field "{column}" = "{rec[field]}" and field "_ref" = "{ref}"')
        assert list(found) == [ref], column
    host = xapi.host.get_all()[0]
    major = xapi.host.get_API_version_major(host)
    assert host in xapi.host.get_all_records_where(f'field "API_version__major" = "{major}"')
    assert xapi.VIF.get_all_records_where('field "qos__algorithm_type" = "no-such-algorithm"') == {}
    # the row's own reference is the column _ref
    assert list(xapi.network.get_all_records_where(f'field "_ref" = "{net}"')) == [net]


def test_where_precedence_is_xapis(xapi):
    """``and``/``or`` share one precedence (left to right); ``not`` takes the rest."""
    # (true or true) and false -> false  (C-like precedence would say true)
    assert xapi.pool.get_all_records_where("true or true and false") == {}
    # not (false and true) -> true  (C-like precedence would say false)
    assert len(xapi.pool.get_all_records_where("not false and true")) == 1
    assert xapi.pool.get_all_records_where("(not false) and false") == {}
    assert len(xapi.pool.get_all_records_where('"a" = "a"')) == 1


def test_messages(xapi, sim):
    host_uuid = sim.pool.master.uuid
    ref = xapi.message.create("TEST_ALERT", "3", "Host", host_uuid, "body text")
    rec = xapi.message.get_record(ref)
    assert (rec["name"], rec["priority"], rec["cls"], rec["body"]) == ("TEST_ALERT", "3", "Host", "body text")
    assert ref in xapi.message.get_all_records_where('field "name"="TEST_ALERT"')
    assert ref in xapi.message.get("Host", host_uuid, "19700101T00:00:00Z")
    xapi.message.destroy(ref)
    assert ref not in xapi.message.get_all()
