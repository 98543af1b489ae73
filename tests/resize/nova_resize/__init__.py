"""Nova REST API functional tests of resize and cold migration (run in a child interpreter).

See ``tests/resize/test_nova_resize.py`` for why and how; ``xenapi_nova_tests``
must be the child's first import (it fixes Nova's concurrency mode).
"""
