import pytest


@pytest.mark.parametrize("n", [1, 2], ids=["skip one", "skip two"])
def test_skip(n):
    pytest.skip(f"feature {n} missing")
