"""Packaging for xenapi-driver.

Only ``nova/virt/xenapi/__init__.py`` is placed inside Nova's namespace:
``nova/__init__.py`` and ``nova/virt/__init__.py`` belong to Nova and are
never shipped, so installing us can neither shadow nor upgrade Nova.
"""

import glob

from setuptools import find_packages, setup

PLUGINS = sorted(
    path for path in glob.glob("plugins/xapi.d/plugins/*") if not path.endswith((".pyc", "__pycache__"))
)

setup(
    name="xenapi-driver",
    version="0.1.0",
    description="OpenStack Nova compute driver for XenServer / XCP-ng (XAPI)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["xenapi_driver", "xenapi_driver.*"]) + ["nova.virt.xenapi"],
    include_package_data=True,
    package_data={"xenapi_driver": ["simulator/*.json", "simulator/**/*.json"]},
    data_files=[("share/xenapi-driver/plugins", PLUGINS)],
    install_requires=[
        "XenAPI>=23.8.0",
        "oslo.config>=9.0.0",
        "oslo.log>=5.0.0",
        "oslo.concurrency>=5.0.0",
        "oslo.utils>=6.0.0",
        "paramiko>=3.0.0",
    ],
    extras_require={
        "eventlet": ["eventlet>=0.33.0"],
        "test": [
            "nova>=34.0.0,<35",
            "openstack-placement>=16.0.0",
            "libvhdi-python",
            "hypothesis",
            "pytest",
            "pytest-timeout",
            "stestr",
            "testtools",
            "oslotest",
            "wsgi-intercept",
            "fixtures",
            "testscenarios",
            "testresources",
            "ruff",
            "coverage",
            "cryptography",
            "wheel",
            "sphinx>=7.0",
        ],
        "docs": ["sphinx>=7.0", "reno"],
    },
    entry_points={
        "console_scripts": [
            "xenapi-driver = xenapi_driver.cli:main",
            "xenapi-simulator = xenapi_driver.simulator.cli:main",
            "xenapi-vhd-util = xenapi_driver.vhd.cli:main",
        ],
        "oslo.config.opts": [
            "xenapi_driver = xenapi_driver.conf:list_opts",
        ],
    },
    classifiers=[
        "Environment :: OpenStack",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.11",
    ],
)
