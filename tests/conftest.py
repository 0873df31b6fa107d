"""The project's own tests: plain pytest, no isolation, no TAP.

tests/data/ holds synthetic case trees that tests run through run_suite.py (KMM_CASES); they
are not collected as tests here.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

collect_ignore = ["data"]
