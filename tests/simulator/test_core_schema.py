"""The committed schema is derived from XAPI's datamodel and complete."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from xenapi_driver.simulator.schema import load, parse_type

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO.parent / "shared" / "reference" / "xenapi.json"


def test_schema_has_every_class_and_no_prose():
    schema = load()
    assert len(schema.classes) == 67
    for name in ("VM", "VDI", "SR", "host", "pool", "task", "session", "event", "Observer"):
        assert name in schema.classes
    text = (REPO / "xenapi_driver/simulator/schema.json").read_text()
    for prose in ('"lifecycle"', '"doc"', "a human-readable name", "Reference to a valid session"):
        assert prose not in text


def test_schema_facts():
    schema = load()
    vm = schema.classes["VM"]
    assert vm.fields["power_state"].type.kind == "enum"
    assert vm.fields["power_state"].initial() == "Halted"
    assert vm.fields["name_label"].rw
    assert not vm.fields["power_state"].rw
    assert vm.fields["VBDs"].type == parse_type("VBD ref set")
    send = vm.messages["migrate_send"]
    assert [p for p, _ in send.params][-2:] == ["vgpu_map", "vdi_format_map"]
    assert send.required == 6
    login = schema.classes["session"].messages["login_with_password"]
    assert login.required == 2 and not login.session
    assert "get_all_records_where" in vm.messages
    assert schema.errors["HANDLE_INVALID"] == ["class", "handle"]
    assert "Running" in schema.enums["vm_power_state"]
    assert ("VM", "VBDs", "VBD", "VM") in schema.relations


def test_parse_type_nested():
    t = parse_type("(string -> (int -> float) map) map")
    assert t.kind == "map" and t.key.kind == "string" and t.elem.kind == "map" and t.elem.key.kind == "int"


@pytest.mark.skipif(not SOURCE.exists(), reason="XAPI datamodel reference not present (fresh clone)")
def test_committed_schema_is_up_to_date():
    out = subprocess.run(
        [sys.executable, str(REPO / "tools/derive_schema.py"), "--check", "--source", str(SOURCE)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
