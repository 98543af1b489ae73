"""Live-migration tests: helpers live in lm_helpers.py (importable under a unique name)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
