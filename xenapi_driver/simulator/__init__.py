"""A XAPI (XenServer / XCP-ng) simulator generated from XAPI's own datamodel.

Start pools with :func:`xenapi_driver.simulator.api.start`; talk to them
with the real ``XenAPI`` SDK.  See ``doc/source/simulator.rst``.
"""
