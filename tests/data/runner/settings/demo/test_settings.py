"""A case whose parameter changes a knob in prepare(); the body then fails, or hangs."""

import os
import time

import pytest

KNOB = "/sys/kernel/mm/transparent_hugepage/khugepaged/alloc_sleep_millisecs"
VALUE = os.environ.get("KMM_TEST_VALUE", "54321")


class Knob:
    def prepare(self, settings):
        settings.set(KNOB, VALUE)

    def __repr__(self):
        return "knob"


@pytest.mark.parametrize("k", [Knob()], ids=["changes a knob then fails"])
def test_fails(k):
    with open(KNOB) as f:
        assert f.read().strip() == VALUE
    raise RuntimeError("boom after changing a knob")


@pytest.mark.parametrize("k", [Knob()], ids=["changes a knob then hangs"])
@pytest.mark.deadline(300)
def test_hangs(k):
    with open("/tmp/kmm-settings-hang-ready", "w") as f:
        f.write("ready")
    time.sleep(300)
