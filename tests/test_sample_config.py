"""The committed etc/nova/nova.conf.sample must match the options in the code.

Generated the way ``tox -e genconfig`` does it: ``oslo-config-generator``
with tools/config-generator.conf, finding our options through the
``oslo.config.opts`` entry point. So that this works from a source tree that
is not pip-installed, the entry point metadata is built with
``setup.py egg_info`` into a temporary directory put on PYTHONPATH.
"""

from __future__ import annotations

import difflib
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "etc" / "nova" / "nova.conf.sample"
REGENERATE = "tox -e genconfig  (or: oslo-config-generator --config-file tools/config-generator.conf)"


def _generate(tmp_path: Path) -> str:
    meta = tmp_path / "meta"
    meta.mkdir()
    subprocess.run(
        [sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(meta)],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=120,
    )
    out = tmp_path / "nova.conf.sample"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(meta), str(REPO)]))
    proc = subprocess.run(
        [
            sys.executable, "-m", "oslo_config.generator",
            "--config-file", "tools/config-generator.conf",
            "--output-file", str(out),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, f"oslo-config-generator failed:\n{proc.stderr}"
    return out.read_text()


def test_sample_config_is_up_to_date(tmp_path):
    generated = _generate(tmp_path)
    committed = SAMPLE.read_text() if SAMPLE.exists() else ""
    if generated != committed:
        diff = "".join(
            difflib.unified_diff(
                committed.splitlines(True),
                generated.splitlines(True),
                "etc/nova/nova.conf.sample (committed)",
                "generated from xenapi_driver/conf.py",
                n=1,
            )
        )
        raise AssertionError(
            f"etc/nova/nova.conf.sample is stale. Regenerate it with:\n    {REGENERATE}\n"
            f"and commit the result.\n{diff[:4000]}"
        )


def test_sample_documents_every_option(tmp_path):
    from xenapi_driver import conf as xconf

    text = SAMPLE.read_text()
    assert "[xenserver]" in text
    for _group, opts in xconf.list_opts():
        for opt in opts:
            assert f"#{opt.name} = " in text, opt.name
