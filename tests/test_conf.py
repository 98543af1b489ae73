"""The [xenserver] option group: every option the driver promises, usable by an operator."""

from __future__ import annotations

import logging

import pytest
from oslo_config import cfg

from xenapi_driver import conf as xconf

# The options issue 2 lists, with their defaults (None: no default).
EXPECTED_DEFAULTS = {
    "connection_url": None,
    "connection_username": "root",
    "connection_password": None,
    "connection_concurrent": 5,
    "login_timeout": 10.0,
    "originator": "xenapi-driver",
    "ca_file": None,
    "insecure": False,
    "sr_matching_filter": "default-sr:true",
    "running_timeout": 60,
    "agent_timeout": 30,
    "agent_version_timeout": 300,
    "agent_resetnetwork_timeout": 60,
    "disable_agent": False,
    "use_agent_default": False,
    "image_handler": "direct_vhd",
    "image_compression_level": None,
    "cache_images": "all",
    "vhd_coalesce_poll_interval": 5.0,
    "vhd_coalesce_max_attempts": 20,
    "sr_base_path": "/var/run/sr-mount",
    "check_host": True,
    "independent_compute": False,
    "num_vbd_unplug_retries": 10,
    "introduce_vdi_retry_wait": 20,
    "target_host": None,
    "target_port": "3260",
    "ovs_integration_bridge": None,
    "use_join_force": True,
    "block_device_creation_timeout": 10,
    "max_kernel_ramdisk_size": 16 * 1024 * 1024,
    "migration_transport": "rsync",
    "compute_vm_uuid": None,
}


@pytest.fixture
def conf() -> cfg.ConfigOpts:
    conf = cfg.ConfigOpts()
    xconf.register_opts(conf)
    return conf


def _load(conf: cfg.ConfigOpts, tmp_path, text: str) -> cfg.ConfigOpts:
    path = tmp_path / "nova.conf"
    path.write_text(text)
    conf(["--config-file", str(path)], project="nova", default_config_files=[])
    return conf


def test_every_listed_option_is_registered_with_its_default(conf):
    conf([], project="nova", default_config_files=[])
    for name, default in EXPECTED_DEFAULTS.items():
        assert getattr(conf.xenserver, name) == default, name


def test_list_opts_matches_registered_options():
    (group, opts), *rest = xconf.list_opts()
    assert rest == []
    assert group.name == "xenserver"
    names = [opt.name for opt in opts]
    assert len(names) == len(set(names))
    assert set(names) == set(EXPECTED_DEFAULTS)


def test_every_option_has_actionable_help():
    for _group, opts in xconf.list_opts():
        for opt in opts:
            assert opt.help and len(opt.help.split()) >= 8, f"{opt.name} needs a helpful help text"


def test_choices_and_secrets():
    opts = {opt.name: opt for _group, group_opts in xconf.list_opts() for opt in group_opts}
    assert opts["connection_password"].secret
    assert set(opts["cache_images"].type.choices) == {"all", "some", "none"}
    assert set(opts["migration_transport"].type.choices) == {"rsync", "xapi"}
    assert set(opts["image_handler"].type.choices) == {"direct_vhd", "vdi_remote_stream", "vdi_local_dev"}
    assert isinstance(opts["connection_url"], cfg.URIOpt)


def test_values_from_a_nova_conf(conf, tmp_path):
    _load(
        conf,
        tmp_path,
        "[xenserver]\n"
        "connection_url = https://xenserver1.example.org\n"
        "connection_password = s3cret-in-conf\n"
        "connection_concurrent = 8\n"
        "cache_images = some\n"
        "migration_transport = xapi\n"
        "sr_matching_filter = other-config:my_sr=true\n",
    )
    xs = conf.xenserver
    assert xs.connection_url == "https://xenserver1.example.org"
    assert xs.connection_concurrent == 8
    assert xs.cache_images == "some"
    assert xs.migration_transport == "xapi"
    assert xs.sr_matching_filter == "other-config:my_sr=true"


@pytest.mark.parametrize(
    "line",
    [
        "connection_url = ftp://xenserver1",
        "cache_images = sometimes",
        "migration_transport = scp",
        "connection_concurrent = 0",
        "image_compression_level = 10",
    ],
)
def test_bad_values_are_refused(conf, tmp_path, line):
    _load(conf, tmp_path, f"[xenserver]\n{line}\n")
    name = line.split("=")[0].strip()
    with pytest.raises(cfg.ConfigFileValueError):
        getattr(conf.xenserver, name)


def test_password_is_masked_when_nova_logs_its_options(conf, tmp_path, caplog):
    _load(conf, tmp_path, "[xenserver]\nconnection_password = s3cret-in-conf\n")
    caplog.set_level(logging.DEBUG)
    conf.log_opt_values(logging.getLogger("test"), logging.DEBUG)
    assert "xenserver.connection_password" in caplog.text
    assert "s3cret-in-conf" not in caplog.text


def test_registering_twice_is_harmless(conf):
    xconf.register_opts(conf)
    xconf.register_opts(cfg.CONF)
    assert "xenserver" in cfg.CONF


def test_overrides_do_not_leak_between_config_objects():
    first, second = cfg.ConfigOpts(), cfg.ConfigOpts()
    for conf in (first, second):
        xconf.register_opts(conf)
        conf([], project="nova", default_config_files=[])
    first.set_override("connection_url", "http://first.example.org", group="xenserver")
    assert second.xenserver.connection_url is None
