import pytest


@pytest.mark.tap("demo fails")
def test_fails():
    assert 1 == 2, "the kernel did the wrong thing"
