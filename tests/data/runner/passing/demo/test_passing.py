import pytest


@pytest.mark.tap("demo pass")
def test_pass():
    pass


@pytest.mark.tap("demo skip")
def test_skip():
    pytest.skip("not here")
