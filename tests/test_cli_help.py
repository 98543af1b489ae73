"""Every console script answers ``--help``, and so does every ``xenapi-driver`` subcommand.

The scripts are read from ``setup.py``'s ``console_scripts`` (so a new one is
covered without touching this test) and run as the installed wrapper would
run them, in a child process from the checkout. Subcommands are found by
walking the argparse tree of ``xenapi-driver``, so a new subcommand module
is covered too.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _console_scripts() -> dict[str, str]:
    text = (ROOT / "setup.py").read_text(encoding="utf-8")
    block = re.search(r'"console_scripts":\s*\[(.*?)\]', text, re.S).group(1)
    return dict(re.findall(r'"([\w.-]+)\s*=\s*([\w.]+:\w+)"', block))


SCRIPTS = _console_scripts()

# xenapi-vhd-util is a drop-in for blktap's vhd-util, whose scripts parse its
# exit codes: like vhd-util it prints its usage and exits 22 (EINVAL) for help
# and for usage errors alike. Every other script follows argparse (0 / 2).
HELP_EXIT = {"xenapi-vhd-util": 22}
USAGE_EXIT = {"xenapi-vhd-util": 22}


def _run(entry: str, name: str, args: list[str]) -> subprocess.CompletedProcess:
    module, func = entry.split(":")
    code = f"import sys; sys.argv[0] = {name!r}; from {module} import {func} as f; sys.exit(f())"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_expected_scripts_exist() -> None:
    assert {"xenapi-driver", "xenapi-simulator", "xenapi-vhd-util"} <= set(SCRIPTS)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_console_script_help(name: str) -> None:
    child = _run(SCRIPTS[name], name, ["--help"])
    expected = HELP_EXIT.get(name, 0)
    assert child.returncode == expected, (
        f"{name} --help exited {child.returncode}:\n{child.stdout}{child.stderr}"
    )
    assert child.stdout.lstrip().lower().startswith("usage:"), child.stdout
    assert "Traceback" not in child.stderr
    if name == "xenapi-vhd-util":
        assert "COMMAND := {" in child.stdout
        return
    assert name in child.stdout.splitlines()[0], f"usage names the command: {child.stdout.splitlines()[0]}"
    assert len(child.stdout.splitlines()) > 3, "help explains more than the usage line"


def test_vhd_util_commands_print_their_options() -> None:
    """``xenapi-vhd-util COMMAND -h`` lists the command's options, as vhd-util does."""
    entry = SCRIPTS["xenapi-vhd-util"]
    listing = _run(entry, "xenapi-vhd-util", ["--help"]).stdout
    commands = re.search(r"COMMAND := \{(.*?)\}", listing).group(1).replace("|", " ").split()
    assert {"create", "snapshot", "query", "check", "modify", "coalesce", "set"} <= set(commands)
    for command in commands:
        child = _run(entry, "xenapi-vhd-util", [command, "-h"])
        assert child.returncode == 0, f"{command} -h: exit {child.returncode}"
        assert child.stdout.startswith("options:"), f"{command} -h prints its options:\n{child.stdout}"
        assert "Traceback" not in child.stderr


def _subcommands(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], str]]:
    """Every (path of subcommand names, help text) below ``parser``."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                found.append(((*prefix, name), helps.get(name) or sub.description or ""))
                found.extend(_subcommands(sub, (*prefix, name)))
    return found


def _driver_parser() -> argparse.ArgumentParser:
    from xenapi_driver.cli import build_parser

    return build_parser()


SUBCOMMANDS = _subcommands(_driver_parser())


def test_xenapi_driver_has_its_subcommands() -> None:
    names = {path[0] for path, _ in SUBCOMMANDS}
    assert "install-plugins" in names


@pytest.mark.parametrize("path", [p for p, _ in SUBCOMMANDS], ids=[" ".join(p) for p, _ in SUBCOMMANDS])
def test_every_subcommand_is_described(path: tuple[str, ...]) -> None:
    text = dict(SUBCOMMANDS)[path]
    assert text and text.strip(), f"xenapi-driver {' '.join(path)} has no help text in the command list"


@pytest.mark.parametrize("path", [p for p, _ in SUBCOMMANDS], ids=[" ".join(p) for p, _ in SUBCOMMANDS])
def test_every_subcommand_help(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _driver_parser().parse_args([*path, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: xenapi-driver {' '.join(path)}"), out


def test_xenapi_driver_subcommand_help_as_a_process() -> None:
    """One subcommand through the real entry point too (imports, exit code)."""
    child = _run(SCRIPTS["xenapi-driver"], "xenapi-driver", ["install-plugins", "--help"])
    assert child.returncode == 0, child.stderr
    assert "usage: xenapi-driver install-plugins" in child.stdout


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_console_script_refuses_unknown_options(name: str) -> None:
    child = _run(SCRIPTS[name], name, ["--no-such-option-exists"])
    assert child.returncode == USAGE_EXIT.get(name, 2), (
        f"{name}: exit {child.returncode}\n{child.stdout}{child.stderr}"
    )
    assert "Traceback" not in child.stderr
