"""Fixtures of the gup_longterm area (pytest process, once per run).

``gup_test``: the gup_test debugfs file, probed once (lib.kernel.gup_test); debugfs mounted
only to look is unmounted again at once, or at the end of the run when the file is there.
"""

from __future__ import annotations

import pytest

from lib.kernel import gup_test as gup


@pytest.fixture(scope="session")
def gup_test():
    g = gup.probe()
    try:
        yield g
    finally:
        g.close()
