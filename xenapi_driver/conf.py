"""The ``[xenserver]`` configuration group of nova.conf.

Every option the driver reads lives here, so that ``oslo-config-generator``
(``tox -e genconfig``) and the Sphinx configuration reference are generated
from one place and an operator can find every knob with its meaning.

Nova registers its own options on ``oslo_config.cfg.CONF``; we add the
``[xenserver]`` group to the same object. Later features add their options
to :data:`ALL_OPTS` (grouped by purpose below) and regenerate the sample with
``tox -e genconfig``.
"""

from __future__ import annotations

from oslo_config import cfg

GROUP_NAME = "xenserver"

_GROUP_TITLE = "XenServer / XCP-ng options"
_GROUP_HELP = """
Options for the XenServer / XCP-ng (XAPI) compute driver, used when
``[DEFAULT] compute_driver = xenapi.XenAPIDriver``.

Each nova-compute service manages exactly one XenServer host. It talks to
XAPI on that host's pool master; when ``connection_url`` points at a pool
member, the driver follows XAPI's redirect to the master and keeps managing
the member it was pointed at.
"""

#: The group as listed for the sample generator and the docs.
xenserver_group = cfg.OptGroup(GROUP_NAME, title=_GROUP_TITLE, help=_GROUP_HELP)

connection_opts = [
    # Not ``required=True``: oslo.config enforces that whenever any program
    # parses its configuration, and Nova's tools and test fixtures may import
    # this module without a [xenserver] section. XenAPISession.from_conf
    # refuses a missing URL with a clear message instead.
    cfg.URIOpt(
        "connection_url",
        schemes=["http", "https"],
        help="""
Required. URL of the XAPI endpoint of the XenServer host this nova-compute
manages.

Use the host's management address, for example
``https://xenserver1.example.org``. If the host is a pool member rather
than the pool master, XAPI answers ``HOST_IS_SLAVE`` and the driver
reconnects to the master on the same scheme and port, while still managing
the host named here. Prefer ``https``; ``http`` sends the password in clear
text and is only sensible on an isolated management network.
""",
    ),
    cfg.StrOpt(
        "connection_username",
        default="root",
        help="""
User name for logging in to XAPI.

``root`` works everywhere; with role-based access control (Active Directory)
use an account with the ``pool-admin`` role.
""",
    ),
    cfg.StrOpt(
        "connection_password",
        secret=True,
        help="""
Password of ``connection_username``.

Never logged. Keep nova.conf readable only by the user that runs
nova-compute.
""",
    ),
    cfg.IntOpt(
        "connection_concurrent",
        default=5,
        min=1,
        help="""
Maximum number of concurrent XAPI sessions this nova-compute keeps open.

Calls share a pool of this many logged-in sessions; when all are busy,
further callers wait for one to be released. Raise it if many operations
run at once on this host; each session counts against XAPI's per-originator
limit of 500.
""",
    ),
    cfg.FloatOpt(
        "login_timeout",
        default=10.0,
        min=0.1,
        help="""
Timeout in seconds for connecting and logging in to XAPI.

Also bounds how long establishing any connection to XAPI may take, so an
unreachable or hung host gives a clear error instead of blocking
nova-compute.
""",
    ),
    cfg.StrOpt(
        "originator",
        default="xenapi-driver",
        help="""
Originator string sent with every XAPI login.

XAPI garbage-collects sessions per originator (500 each), oldest first. A
distinct originator keeps this driver's sessions from pushing out those of
other clients (XenCenter, Xen Orchestra, scripts) and the other way round.
Change it only if several services share one account and you want them
separated.
""",
    ),
    cfg.StrOpt(
        "ca_file",
        help="""
Path of a PEM file with the CA certificate(s) that signed XAPI's TLS
certificate, for ``https`` connection URLs.

When unset, the system's trust store is used. XenServer installs a
self-signed certificate by default: either copy
``/etc/xensource/xapi-ssl.pem``'s certificate part (or the pool's CA
certificate) here, or install a certificate signed by your CA on the host.
""",
    ),
    cfg.BoolOpt(
        "insecure",
        default=False,
        help="""
Skip verification of XAPI's TLS certificate.

Only for test environments: anyone on the path could impersonate the host
and capture the password. Prefer ``ca_file``.
""",
    ),
]

host_opts = [
    cfg.StrOpt(
        "sr_matching_filter",
        default="default-sr:true",
        help="""
How to choose the storage repository (SR) for instance disks.

``default-sr:true`` uses the pool's default SR. ``other-config:KEY=VALUE``
uses the first SR whose ``other_config`` has that key and value (set it with
``xe sr-param-set uuid=<sr> other-config:KEY=VALUE``). Copy-on-write
snapshots, the image cache and resize need a file-based SR (EXT or NFS).
Resource pools need the shared default SR.
""",
    ),
    cfg.StrOpt(
        "sr_base_path",
        default="/var/run/sr-mount",
        help="""
Directory in dom0 under which file-based SRs are mounted, one
``<sr-uuid>`` sub-directory each. Only change it if your XenServer mounts
SRs elsewhere.
""",
    ),
    cfg.BoolOpt(
        "check_host",
        default=True,
        help="""
Check at start-up that the host nova-compute manages is the XAPI host it
runs on (compares the compute VM's resident host with the managed host).

Disable only when nova-compute runs outside the host it manages, for example
on a separate server (see ``independent_compute``).
""",
    ),
    cfg.BoolOpt(
        "independent_compute",
        default=False,
        help="""
Run nova-compute independently of the host it manages (not in a VM on it).

Features that need the compute VM to be on the managed host are not
available in this mode: AMI-style kernel/ramdisk images, the
``vdi_local_dev`` image handler (it attaches disks to the compute VM),
resize down, and automatic pool joins. Requires ``check_host = false``.
""",
    ),
    cfg.StrOpt(
        "compute_vm_uuid",
        help="""
UUID of the VM this nova-compute runs in, on the host it manages.

Only resource pools need it: the pool master's compute shuts this VM down
cleanly for the pool join and starts it again afterwards. When unset, the
driver reads ``/sys/hypervisor/uuid`` inside the compute VM, where Xen shows
the VM's UUID; set it only where that file is missing.
""",
    ),
    cfg.IntOpt(
        "num_vbd_unplug_retries",
        default=10,
        min=0,
        help="""
How many times to retry unplugging a virtual block device (VBD) that XAPI
reports busy (``DEVICE_DETACH_REJECTED``), one second apart, before giving
up.
""",
    ),
    cfg.IntOpt(
        "block_device_creation_timeout",
        default=10,
        min=1,
        help="""
Seconds to wait for a block device to appear in the compute VM after
plugging a VBD into it.
""",
    ),
    cfg.StrOpt(
        "ovs_integration_bridge",
        help="""
Name of the Open vSwitch integration bridge in dom0 (for example
``br-int``) that Neutron's OVS agent manages.

When set, VIFs are attached to the XAPI network whose bridge is this one.
Leave unset to use the network Neutron's port binding names.
""",
    ),
    cfg.BoolOpt(
        "use_join_force",
        default=True,
        help="""
Join hosts to a resource pool with ``pool.join_force`` instead of
``pool.join``.

``pool.join`` refuses hosts whose CPUs differ from the master's;
``join_force`` accepts them, which can make live migration between them
fail for guests that use CPU features the destination lacks.
""",
    ),
]

power_opts = [
    cfg.IntOpt(
        "running_timeout",
        default=60,
        min=1,
        help="""
Seconds to wait for a started instance to reach the Running power state
before the start is treated as failed.
""",
    ),
]

agent_opts = [
    cfg.IntOpt(
        "agent_timeout",
        default=30,
        min=1,
        help="""
Seconds to wait for the guest agent to answer a request (password, file or
network injection) through XenStore.
""",
    ),
    cfg.IntOpt(
        "agent_version_timeout",
        default=300,
        min=1,
        help="""
Seconds to wait for the guest agent to report its version after boot.

Longer than ``agent_timeout`` because guests may take long to boot (first
boot of Windows, file-system checks).
""",
    ),
    cfg.IntOpt(
        "agent_resetnetwork_timeout",
        default=60,
        min=1,
        help="""
Seconds to wait for the guest agent to apply new network settings
(``resetnetwork``).
""",
    ),
    cfg.BoolOpt(
        "disable_agent",
        default=False,
        help="""
Never use the guest agent, whatever the image says.

Set it when your images have no agent: set_admin_password and injection
then fail at once with a clear error instead of waiting for a timeout.
""",
    ),
    cfg.BoolOpt(
        "use_agent_default",
        default=False,
        help="""
Whether to use the guest agent for images that do not say so themselves
(image property ``xenapi_use_agent``).

Leave false unless all your images carry the agent, or boots of
agent-less images wait ``agent_version_timeout`` for nothing.
""",
    ),
]

image_opts = [
    cfg.StrOpt(
        "image_handler",
        default="direct_vhd",
        choices=[
            ("direct_vhd", "dom0 downloads and uploads images itself through the glance plug-in"),
            (
                "vdi_remote_stream",
                "nova-compute streams disks through XAPI's HTTP import_raw_vdi and "
                "export_raw_vdi; dom0 needs no access to Glance",
            ),
            (
                "vdi_local_dev",
                "nova-compute attaches the disk to its own VM and uploads it as a raw tgz "
                "(needs nova-compute to run on the managed host)",
            ),
        ],
        help="""
How images move between Glance and the SR.
""",
    ),
    cfg.IntOpt(
        "image_compression_level",
        min=1,
        max=9,
        help="""
gzip compression level for images uploaded to Glance (1 fastest, 9
smallest). Unset means no compression, which is usually best on fast
networks because compression costs dom0 CPU.
""",
    ),
    cfg.StrOpt(
        "cache_images",
        default="all",
        choices=[
            ("all", "cache every image"),
            ("some", "cache only images whose property cache_in_nova is true"),
            ("none", "never cache; every boot copies the image"),
        ],
        help="""
Cache images in the SR so later boots clone them instead of copying.

The first boot of a cached image copies it once; later boots on this host
take a copy-on-write clone in constant time. Unused cached images are
removed by Nova's image cache manager (``[image_cache]`` options).
""",
    ),
    cfg.FloatOpt(
        "vhd_coalesce_poll_interval",
        default=5.0,
        min=0,
        help="""
Seconds between checks that XenServer's storage garbage collector has
coalesced a VHD chain after a snapshot.
""",
    ),
    cfg.IntOpt(
        "vhd_coalesce_max_attempts",
        default=20,
        min=0,
        help="""
How many times to check for a coalesced VHD chain (every
``vhd_coalesce_poll_interval`` seconds) before giving up with an error.
""",
    ),
    cfg.IntOpt(
        "max_kernel_ramdisk_size",
        default=16 * 1024 * 1024,
        min=0,
        help="""
Largest kernel or ramdisk, in bytes, that may be copied to dom0's
``/boot/guest`` for AMI-style images. Protects dom0's small root
file system.
""",
    ),
]

volume_opts = [
    cfg.IntOpt(
        "introduce_vdi_retry_wait",
        default=20,
        min=0,
        help="""
Seconds to wait for a volume's SR to be scanned and its VDI to appear
before giving up on attaching the volume.
""",
    ),
    cfg.StrOpt(
        "target_host",
        help="""
iSCSI target host used when Cinder's connection info does not name one.
Normally unset.
""",
    ),
    cfg.StrOpt(
        "target_port",
        default="3260",
        help="""
iSCSI target port used when Cinder's connection info does not name one.
""",
    ),
]

migration_opts = [
    cfg.StrOpt(
        "migration_transport",
        default="rsync",
        choices=[
            (
                "rsync",
                "dom0 copies VHD files to the destination dom0 with rsync over root SSH trust "
                "between dom0s (the migration plug-in); needs /images and SSH keys set up",
            ),
            (
                "xapi",
                "nova-compute streams each VHD from the source host's export_raw_vdi into the "
                "destination host's import_raw_vdi; no SSH trust between dom0s, but both "
                "management networks must be reachable from nova-compute",
            ),
        ],
        help="""
How resize and cold migration copy disks between hosts that do not share
the SR. Hosts sharing the SR move nothing either way.
""",
    ),
]

ALL_OPTS = connection_opts + host_opts + power_opts + agent_opts + image_opts + volume_opts + migration_opts


def register_opts(conf: cfg.ConfigOpts) -> None:
    """Register the ``[xenserver]`` group and its options on ``conf``.

    Idempotent, as oslo.config allows re-registering identical options, so
    every module that reads the options may call it. Each ConfigOpts gets its
    own OptGroup object: oslo.config keeps option values and overrides in the
    group object (shallow-copied on registration), so sharing one between
    ConfigOpts instances would leak overrides from one to the other.
    """
    if GROUP_NAME not in conf:
        conf.register_group(cfg.OptGroup(GROUP_NAME, title=_GROUP_TITLE, help=_GROUP_HELP))
    conf.register_opts(ALL_OPTS, group=GROUP_NAME)


def list_opts() -> list[tuple[cfg.OptGroup, list[cfg.Opt]]]:
    """Options for ``oslo-config-generator`` and the Sphinx extension.

    Referenced by the ``oslo.config.opts`` entry point ``xenapi_driver``;
    oslo.config expects ``(group, options)`` pairs.
    """
    return [(xenserver_group, list(ALL_OPTS))]


CONF = cfg.CONF
register_opts(CONF)
