"""The second case fills the filesystem at $KMM_FILL_DIR (the results folder's), the others
pass: the run must end non-zero with no report claiming success."""

import errno
import os

import pytest


@pytest.mark.parametrize("n", range(1, 7), ids=[f"case {i}" for i in range(1, 7)])
def test_case(n):
    if n != 2:
        return
    fd = os.open(os.path.join(os.environ["KMM_FILL_DIR"], "filler"), os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(fd, b"x" * 4096)
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
    finally:
        os.close(fd)
