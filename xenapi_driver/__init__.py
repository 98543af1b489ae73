"""OpenStack Nova compute driver for XenServer / XCP-ng (XAPI)."""

__version__ = "0.1.0"
