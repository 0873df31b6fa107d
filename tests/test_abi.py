"""lib.kernel.abi against the kernel's UAPI: struct sizes and offsets, ioctl numbers, bit values.

Expected numbers are the ones a compiled x86_64 program prints for the UAPI headers
(include/uapi/linux/userfaultfd.h, fs.h and mman-common.h for x86_64), written out here
independently of lib.kernel.abi's derivation.
"""

import ctypes

import pytest

from lib.kernel import abi

SIZES = {
    abi.uffdio_api: 24, abi.uffdio_range: 16, abi.uffdio_register: 32, abi.uffdio_copy: 40,
    abi.uffdio_zeropage: 32, abi.uffdio_writeprotect: 24, abi.uffdio_continue: 32, abi.uffdio_poison: 32,
    abi.uffdio_move: 40, abi.uffd_msg: 32, abi.pm_scan_arg: 96, abi.page_region: 24, abi.pin_longterm_test: 24,
}


@pytest.mark.parametrize("struct,size", SIZES.items(), ids=[s.__name__ for s in SIZES])
def test_struct_size(struct, size):
    assert ctypes.sizeof(struct) == size


OFFSETS = [
    (abi.uffdio_api, "features", 8), (abi.uffdio_api, "ioctls", 16),
    (abi.uffdio_register, "mode", 16), (abi.uffdio_register, "ioctls", 24),
    (abi.uffdio_copy, "src", 8), (abi.uffdio_copy, "len", 16), (abi.uffdio_copy, "mode", 24),
    (abi.uffdio_copy, "copy", 32), (abi.uffdio_zeropage, "zeropage", 24), (abi.uffdio_continue, "mapped", 24),
    (abi.uffdio_poison, "updated", 24), (abi.uffdio_move, "move", 32), (abi.uffdio_writeprotect, "mode", 16),
    (abi.uffd_msg, "event", 0), (abi.uffd_msg, "arg", 8),
    (abi.pm_scan_arg, "walk_end", 32), (abi.pm_scan_arg, "vec", 40), (abi.pm_scan_arg, "max_pages", 56),
    (abi.pm_scan_arg, "category_anyof_mask", 80), (abi.pm_scan_arg, "return_mask", 88),
    (abi.page_region, "categories", 16), (abi.pin_longterm_test, "flags", 16),
]


@pytest.mark.parametrize("struct,name,offset", OFFSETS, ids=[f"{s.__name__}.{n}" for s, n, _ in OFFSETS])
def test_field_offset(struct, name, offset):
    assert getattr(struct, name).offset == offset


def test_uffd_msg_union_offsets():
    m = abi.uffd_msg()
    base = ctypes.addressof(m)
    pf = m.arg.pagefault
    assert ctypes.addressof(pf) - base == 8
    assert abi._msg_pagefault.address.offset == 8  # msg offset 16
    assert abi._msg_pagefault.feat.offset == 16  # msg offset 24 (ptid)
    assert abi._msg_remap.len.offset == 16  # msg offset 24
    assert abi._msg_remove.end.offset == 8  # msg offset 16


IOCTLS = {
    "UFFDIO_REGISTER": 0xC020AA00, "UFFDIO_UNREGISTER": 0x8010AA01, "UFFDIO_WAKE": 0x8010AA02,
    "UFFDIO_COPY": 0xC028AA03, "UFFDIO_ZEROPAGE": 0xC020AA04, "UFFDIO_MOVE": 0xC028AA05,
    "UFFDIO_WRITEPROTECT": 0xC018AA06, "UFFDIO_CONTINUE": 0xC020AA07, "UFFDIO_POISON": 0xC020AA08,
    "UFFDIO_API": 0xC018AA3F, "USERFAULTFD_IOC_NEW": 0x0000AA00, "PAGEMAP_SCAN": 0xC0606610,
    "PIN_LONGTERM_TEST_START": 0x40186707, "PIN_LONGTERM_TEST_STOP": 0x6708, "PIN_LONGTERM_TEST_READ": 0x40086709,
}


@pytest.mark.parametrize("name,value", IOCTLS.items(), ids=list(IOCTLS))
def test_ioctl_number(name, value):
    assert getattr(abi, name) == value


def test_masks_and_bits():
    assert abi.UFFD_API_IOCTLS == 0x8000000000000003
    assert int(abi.ALL_FEATURES) == (1 << 17) - 1
    assert abi.Feature.MOVE == 1 << 16 and abi.Feature.WP_ASYNC == 1 << 15
    assert abi.PM_UFFD_WP == 1 << 57 and abi.PM_MMAP_EXCLUSIVE == 1 << 56 and abi.PM_PRESENT == 1 << 63
    assert abi.KPF.THP == 1 << 22 and abi.KPF.COMPOUND_HEAD == 1 << 15
    assert abi.Event.PAGEFAULT == 0x12 and abi.Event.UNMAP == 0x16
    assert abi.Madv.COLLAPSE == 25 and abi.Madv.POPULATE_WRITE == 23


def test_huge_size_flag():
    assert abi.huge_size_flag(2 << 20) == 21 << 26
    assert abi.huge_size_flag(1 << 30) == 30 << 26
    with pytest.raises(ValueError):
        abi.huge_size_flag(3 << 20)


@pytest.mark.parametrize("cls", [abi.uffdio_range, abi.uffdio_copy, abi.uffdio_zeropage, abi.uffdio_writeprotect,
                                 abi.uffdio_continue, abi.uffdio_register], ids=lambda c: c.__name__)
def test_packer_matches_the_ctypes_layout(cls):
    """abi.packer: packed bytes read back through the ctypes structure give the same fields."""
    p = abi.packer(cls)
    values = [0x1111 * (i + 1) for i in range(len(p.unpack(bytes(p.size))))]
    s = cls.from_buffer_copy(p.pack(*values))
    flat = []

    def walk(obj):
        for name, _typ in obj._fields_:
            v = getattr(obj, name)
            if isinstance(v, ctypes.Structure):
                walk(v)
            else:
                flat.append(v)

    walk(s)
    assert flat == values
    assert p.size == ctypes.sizeof(cls)


def test_packer_refuses_a_padded_structure():
    class padded(ctypes.Structure):
        _fields_ = [("a", ctypes.c_uint32), ("b", ctypes.c_uint64)]

    with pytest.raises(TypeError, match="padding"):
        abi.packer(padded)
