import pytest


@pytest.mark.tap("splat during a passing case")
def test_splat():
    with open("/dev/kmsg", "w") as f:
        f.write("<4>WARNING: kmm-conformance synthetic splat (negative control of the kernel log watch)\n")
