"""Sphinx configuration for the xenapi-driver documentation.

Build with ``tox -e docs`` or
``sphinx-build -W -b html doc/source doc/build/html``.

The configuration reference is generated from the options themselves by
``oslo_config.sphinxext`` (``.. show-options:: xenapi_driver``), which finds
them through the ``oslo.config.opts`` entry point. When the docs are built
from a source tree that is not pip-installed, the entry point metadata is
generated with ``setup.py egg_info`` into a temporary directory first.
"""

from __future__ import annotations

import atexit
import importlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, ROOT)


def _ensure_opts_entry_point() -> None:
    names = {ep.name for ep in importlib.metadata.entry_points(group="oslo.config.opts")}
    if "xenapi_driver" in names:
        return
    meta = tempfile.mkdtemp(prefix="xenapi-driver-docs-")
    atexit.register(shutil.rmtree, meta, True)
    subprocess.run(
        [sys.executable, "setup.py", "-q", "egg_info", "--egg-base", meta],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    sys.path.insert(1, meta)
    importlib.invalidate_caches()


_ensure_opts_entry_point()

from xenapi_driver import __version__  # noqa: E402

project = "xenapi-driver"
copyright = "the xenapi-driver authors"
author = "the xenapi-driver authors"
version = release = __version__

extensions = [
    "oslo_config.sphinxext",
]

templates_path: list[str] = []
exclude_patterns: list[str] = []
source_suffix = {".rst": "restructuredtext"}
master_doc = "index"
pygments_style = "sphinx"
html_theme = "alabaster"
html_static_path: list[str] = []
html_title = "xenapi-driver"
