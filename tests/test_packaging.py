"""Packaging proof: ``pip install`` into an environment that already holds Nova 34.

What an operator does: build our wheel, ``pip install`` it into the virtualenv
that runs nova-compute, set ``compute_driver = xenapi.XenAPIDriver``. Nova
then imports ``nova.virt.xenapi`` and must get our ``XenAPIDriver``. Uninstalling
must remove our one shim file and leave every Nova file alone.

The shim has to live physically inside Nova's own ``nova/virt/`` directory
(``nova`` is a regular package, so a second site directory holding
``nova/virt/xenapi`` would never be searched). A ``--system-site-packages``
venv made from the shared ``.venv`` interpreter would see the *base*
Python's site-packages, not the shared venv's Nova. So the test builds a
throw-away venv whose site-packages is a hard-link copy of the shared venv's
(the same Nova 34 files, created in well under a second, and nothing written
to it can reach the shared venv: pip and Python replace files rather than
rewrite them, and directories are new) and does the real ``pip install`` /
``pip uninstall`` there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IGNORE = shutil.ignore_patterns(
    ".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache",
    ".hypothesis", ".tox", ".stestr", "doc",
)  # fmt: skip


def _run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    kwargs.setdefault("timeout", 180)
    proc = subprocess.run(argv, **kwargs)
    assert proc.returncode == 0, f"{' '.join(argv)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["OS_NOVA_DISABLE_EVENTLET_PATCHING"] = "1"
    return env


def _snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every file of Nova's tree (no bytecode caches): size, mtime and inode.

    The same inode and mtime mean the file was neither rewritten nor replaced.
    """
    files = {}
    for path in root.rglob("*"):
        if "__pycache__" in path.parts or not path.is_file():
            continue
        st = path.stat()
        files[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns, st.st_ino)
    return files


def _build_wheel(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=IGNORE)
    out = tmp_path / "wheels"
    argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)]
    try:
        import setuptools  # noqa: F401
        import wheel  # noqa: F401

        argv.insert(4, "--no-build-isolation")  # offline-friendly when the tools are here
    except ImportError:
        pass
    _run(argv, cwd=tmp_path, env=_clean_env())
    (wheel_path,) = out.glob("xenapi_driver-*.whl")
    return wheel_path


def _make_venv_with_shared_nova(tmp_path: Path) -> tuple[Path, Path]:
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], env=_clean_env())
    python = venv / "bin" / "python"
    purelib = Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            env=_clean_env(),
        ).stdout.strip()
    )
    shared = Path(sysconfig.get_paths()["purelib"])
    shutil.rmtree(purelib)
    try:
        _run(["cp", "-al", str(shared), str(purelib)])
    except AssertionError:  # another file system: a real copy is slower but equally faithful
        shutil.rmtree(purelib, ignore_errors=True)
        shutil.copytree(shared, purelib, symlinks=True)
    return python, purelib


CHECK = textwrap.dedent(
    """
    import json, sys
    from nova.virt import driver, fake
    drv = driver.load_compute_driver(fake.FakeVirtAPI(), "xenapi.XenAPIDriver")
    import nova, nova.virt.xenapi, xenapi_driver, xenapi_driver.driver
    print(json.dumps({
        "class": type(drv).__module__ + "." + type(drv).__qualname__,
        "is_compute_driver": isinstance(drv, driver.ComputeDriver),
        "same_class": type(drv) is xenapi_driver.driver.XenAPIDriver,
        "nova_version": __import__("importlib.metadata").metadata.version("nova"),
        "nova_file": nova.__file__,
        "shim_file": nova.virt.xenapi.__file__,
        "library_file": xenapi_driver.__file__,
    }))
    """
)


def test_pip_install_into_nova_env_loads_driver_and_uninstall_is_clean(tmp_path):
    wheel_path = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel_path).namelist())
    assert "nova/virt/xenapi/__init__.py" in names
    assert "nova/__init__.py" not in names, "the wheel must never ship Nova's own package files"
    assert "nova/virt/__init__.py" not in names
    assert {n for n in names if n.startswith("nova/")} == {"nova/virt/xenapi/__init__.py"}
    assert "xenapi_driver/driver.py" in names and "xenapi_driver/session.py" in names
    assert not any(n.startswith("tests/") for n in names)

    python, purelib = _make_venv_with_shared_nova(tmp_path)
    pip = [str(python), "-m", "pip", "--disable-pip-version-check"]
    env = _clean_env()
    work = tmp_path / "elsewhere"  # not the source tree: imports must come from the venv
    work.mkdir()
    # The shared venv may hold an earlier install of ours (./run installs it): start clean.
    _run([*pip, "uninstall", "-y", "-q", "xenapi-driver"], env=env, cwd=work)
    probe = subprocess.run(
        [str(python), "-c", "import xenapi_driver"], env=env, cwd=work, capture_output=True, timeout=60
    )
    assert probe.returncode != 0, (
        "xenapi_driver is importable before installing: the test would prove nothing"
    )

    nova_dir = purelib / "nova"
    before = _snapshot(nova_dir)
    assert "__init__.py" in before and "virt/__init__.py" in before

    _run([*pip, "install", "--no-deps", "--no-index", "-q", str(wheel_path)], env=env, cwd=work)
    assert (nova_dir / "virt" / "xenapi" / "__init__.py").is_file()
    result = json.loads(_run([str(python), "-c", CHECK], env=env, cwd=work).stdout.strip().splitlines()[-1])
    assert result["class"] == "xenapi_driver.driver.XenAPIDriver"
    assert result["is_compute_driver"] and result["same_class"]
    assert result["nova_version"].startswith("34.")
    for key in ("nova_file", "shim_file", "library_file"):
        assert result[key].startswith(str(purelib)), (key, result[key])
    installed = _snapshot(nova_dir)
    assert {k: v for k, v in installed.items() if not k.startswith("virt/xenapi/")} == before

    _run([*pip, "uninstall", "-y", "-q", "xenapi-driver"], env=env, cwd=work)
    assert not (nova_dir / "virt" / "xenapi").exists() or not any(
        p for p in (nova_dir / "virt" / "xenapi").rglob("*") if "__pycache__" not in p.parts
    )
    assert not (purelib / "xenapi_driver").exists()
    assert _snapshot(nova_dir) == before, "uninstalling xenapi-driver changed Nova's files"
    # The shared environment's Nova still has its package files.
    shared_nova = Path(sysconfig.get_paths()["purelib"]) / "nova"
    assert (shared_nova / "__init__.py").is_file() and (shared_nova / "virt" / "__init__.py").is_file()
