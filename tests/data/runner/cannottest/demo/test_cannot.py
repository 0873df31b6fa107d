import pytest

from lib.check import CannotTest


@pytest.mark.tap("demo passes")
def test_passes():
    pass


@pytest.mark.tap("demo cannot judge")
def test_cannot_judge():
    raise CannotTest("khugepaged made no progress")
