import time

import pytest


@pytest.mark.parametrize("n", range(20), ids=[f"slow case {i}" for i in range(20)])
def test_slow(n):
    time.sleep(0.3)
