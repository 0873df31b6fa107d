"""UFFDIO_API handshake, as uffd-unit-tests' "UFFDIO_API (with syscall|/dev/userfaultfd)".

fs/userfaultfd.c userfaultfd_api(): an api other than UFFD_API (0xAA) or an unknown feature
bit is EINVAL; a second UFFDIO_API on an initialised uffd is EINVAL; a good handshake returns
the supported features and the ioctls mask, which contains REGISTER, UNREGISTER and API
(uffd-unit-tests, linux-mm TAP version).  Opened with UFFD_USER_MODE_ONLY, as upstream does,
so an unprivileged user can run it too.
"""

import errno

import pytest

from lib import check
from lib.kernel import abi, needs
from lib.kernel.uffd import Userfaultfd


@pytest.mark.parametrize("via", ["syscall", "dev"],
                         ids=["UFFDIO_API (with syscall)", "UFFDIO_API (with /dev/userfaultfd)"])
def test_uffdio_api(via: str) -> None:
    needs.open_path(via, user_mode_only=True)
    with Userfaultfd.open(via=via, user_mode_only=True) as u:
        with check.raises_errno(errno.EINVAL, "UFFDIO_API with api 0xab"):
            u.api(0, api=0xAB)
        with check.raises_errno(errno.EINVAL, "UFFDIO_API with unknown feature bit 63"):
            u.api(1 << 63)
        a = u.api(0)
        check.mask_has(a.ioctls, abi.UFFD_API_IOCTLS, "uffdio_api.ioctls")
        with check.raises_errno(errno.EINVAL, "a second UFFDIO_API on the same fd"):
            u.api(int(abi.Feature.PAGEFAULT_FLAG_WP))
