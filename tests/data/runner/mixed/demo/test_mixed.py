import pytest


@pytest.mark.tap("demo pass")
def test_pass():
    assert 1 + 1 == 2


@pytest.mark.tap("demo skip")
def test_skip():
    pytest.skip("feature missing: DEMO")


@pytest.mark.tap("demo xfail")
def test_xfail():
    pytest.xfail("upstream documents this limitation")


@pytest.mark.tap("demo fail")
def test_fail():
    assert [1, 2] == [1, 3], "list differs"


@pytest.mark.parametrize("n", [1, 2], ids=["demo param one", "demo param two"])
def test_param(n):
    assert n in (1, 2)
