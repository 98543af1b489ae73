"""pytest must not collect the Nova-based tests itself.

They are testtools/unittest tests built on Nova's own machinery, whose mock
decorators and fixtures pytest breaks; ``test_nova_suites.py`` runs them in a
child process with a unittest runner instead (see README.md).
"""

collect_ignore = ["xenapi_nova_tests"]
