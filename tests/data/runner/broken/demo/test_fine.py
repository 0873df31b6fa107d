import pytest


@pytest.mark.tap("fine")
def test_fine():
    pass
