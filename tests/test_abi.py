"""lib.kernel.abi against the kernel's UAPI: struct sizes and offsets, ioctl numbers, bit values.

Expected numbers are the ones a compiled x86_64 program prints for the UAPI headers
(include/uapi/linux/userfaultfd.h, fs.h and mman-common.h for x86_64), written out here
independently of lib.kernel.abi's derivation.
"""

import ctypes

import pytest

from lib.kernel import abi

# (struct, sizeof, {field: offsetof}) as a compiled x86_64 program prints them for the UAPI
# headers: userfaultfd.h, fs.h (pm_scan_arg, page_region), mm/gup_test.h, io_uring.h, uio.h,
# arch/x86/include/uapi/asm/signal.h (struct sigaction as rt_sigaction(2) takes it: handler,
# flags, restorer, mask), asm-generic/siginfo.h and asm-generic/statfs.h (64-bit: __statfs_word
# is long), linux/capability.h (capget/capset header and data).
LAYOUTS = [
    (abi.uffdio_api, 24, {"api": 0, "features": 8, "ioctls": 16}),
    (abi.uffdio_range, 16, {"start": 0, "len": 8}),
    (abi.uffdio_register, 32, {"range": 0, "mode": 16, "ioctls": 24}),
    (abi.uffdio_copy, 40, {"dst": 0, "src": 8, "len": 16, "mode": 24, "copy": 32}),
    (abi.uffdio_zeropage, 32, {"range": 0, "mode": 16, "zeropage": 24}),
    (abi.uffdio_writeprotect, 24, {"range": 0, "mode": 16}),
    (abi.uffdio_continue, 32, {"range": 0, "mode": 16, "mapped": 24}),
    (abi.uffdio_poison, 32, {"range": 0, "mode": 16, "updated": 24}),
    (abi.uffdio_move, 40, {"dst": 0, "src": 8, "len": 16, "mode": 24, "move": 32}),
    (abi.uffd_msg, 32, {"event": 0, "arg": 8}),
    (abi.pm_scan_arg, 96, {"size": 0, "flags": 8, "start": 16, "end": 24, "walk_end": 32, "vec": 40,
                           "vec_len": 48, "max_pages": 56, "category_inverted": 64, "category_mask": 72,
                           "category_anyof_mask": 80, "return_mask": 88}),
    (abi.page_region, 24, {"start": 0, "end": 8, "categories": 16}),
    (abi.pin_longterm_test, 24, {"addr": 0, "size": 8, "flags": 16}),
    (abi.iovec, 16, {"base": 0, "len": 8}),
    (abi.io_sqring_offsets, 40, {"head": 0, "tail": 4, "ring_mask": 8, "ring_entries": 12, "flags": 16,
                                 "dropped": 20, "array": 24, "resv1": 28, "user_addr": 32}),
    (abi.io_cqring_offsets, 40, {"head": 0, "tail": 4, "ring_mask": 8, "ring_entries": 12, "overflow": 16,
                                 "cqes": 20, "flags": 24, "resv1": 28, "user_addr": 32}),
    (abi.io_uring_params, 120, {"sq_entries": 0, "cq_entries": 4, "flags": 8, "sq_thread_cpu": 12,
                                "sq_thread_idle": 16, "features": 20, "wq_fd": 24, "resv": 28,
                                "sq_off": 40, "cq_off": 80}),
    (abi.io_uring_sqe, 64, {"opcode": 0, "flags": 1, "ioprio": 2, "fd": 4, "off": 8, "addr": 16, "len": 24,
                            "rw_flags": 28, "user_data": 32, "buf_index": 40, "personality": 42,
                            "splice_fd_in": 44, "addr3": 48}),
    (abi.io_uring_cqe, 16, {"user_data": 0, "res": 8, "flags": 12}),
    (abi.sigaction, 32, {"handler": 0, "flags": 8, "restorer": 16, "mask": 24}),
    (abi.siginfo, 128, {"signo": 0, "errno": 4, "code": 8, "addr": 16}),
    (abi.cap_user_header, 8, {"version": 0, "pid": 4}),
    (abi.cap_user_data, 12, {"effective": 0, "permitted": 4, "inheritable": 8}),
    (abi.statfs, 120, {"f_type": 0, "f_bsize": 8, "f_blocks": 16, "f_bfree": 24, "f_bavail": 32, "f_files": 40,
                       "f_ffree": 48, "f_fsid": 56, "f_namelen": 64, "f_frsize": 72, "f_flags": 80, "f_spare": 88}),
]


def layout_errors(struct: type[ctypes.Structure], size: int, offsets: dict[str, int]) -> list[str]:
    """Every way ``struct`` differs from the expected size and field offsets ([] when none)."""
    errors = []
    if ctypes.sizeof(struct) != size:
        errors.append(f"sizeof({struct.__name__}) = {ctypes.sizeof(struct)}, expected {size}")
    for name, offset in offsets.items():
        field = getattr(struct, name, None)
        if field is None:
            errors.append(f"{struct.__name__}.{name} missing")
        elif field.offset != offset:
            errors.append(f"offsetof({struct.__name__}, {name}) = {field.offset}, expected {offset}")
    return errors


@pytest.mark.parametrize("struct,size,offsets", LAYOUTS, ids=[s.__name__ for s, _, _ in LAYOUTS])
def test_struct_layout(struct, size, offsets):
    assert layout_errors(struct, size, offsets) == []


class glibc_order_sigaction(ctypes.Structure):
    """Negative control: glibc's userspace struct sigaction (handler, 1024-bit mask, int flags,
    restorer), the layout rt_sigaction(2) does not take."""

    _fields_ = [("handler", ctypes.c_void_p), ("mask", ctypes.c_uint64 * 16), ("flags", ctypes.c_int),
                ("restorer", ctypes.c_void_p)]


class sqe_with_u32_buf_index(ctypes.Structure):
    """Negative control: io_uring_sqe with buf_index one size too wide (every later field moves)."""

    _fields_ = [(n, ctypes.c_uint32 if n == "buf_index" else t) for n, t in abi.io_uring_sqe._fields_]


def test_layout_check_catches_a_wrong_layout():
    expected = {s: (size, offsets) for s, size, offsets in LAYOUTS}
    errors = layout_errors(glibc_order_sigaction, *expected[abi.sigaction])
    assert "sizeof(glibc_order_sigaction) = 152, expected 32" in errors
    assert "offsetof(glibc_order_sigaction, flags) = 136, expected 8" in errors
    assert "offsetof(glibc_order_sigaction, mask) = 8, expected 24" in errors
    errors = layout_errors(sqe_with_u32_buf_index, *expected[abi.io_uring_sqe])
    assert "offsetof(sqe_with_u32_buf_index, personality) = 44, expected 42" in errors
    assert "offsetof(sqe_with_u32_buf_index, addr3) = 56, expected 48" in errors
    assert layout_errors(abi.io_uring_cqe, 16, {"user_data": 0, "res": 8, "flags": 12, "big_cqe": 16}) == [
        "io_uring_cqe.big_cqe missing"]


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


# name -> value: syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl), io_uring numbers
# (include/uapi/linux/io_uring.h), signal numbers (arch/x86/include/uapi/asm/signal.h,
# asm-generic/signal-defs.h), file-system magics (include/uapi/linux/magic.h), mempolicy.h,
# sched.h, prctl.h and capability.h, written out independently of lib.kernel.abi.
NUMBERS = {
    "NR.mmap": 9, "NR.mprotect": 10, "NR.munmap": 11, "NR.rt_sigaction": 13, "NR.rt_sigreturn": 15,
    "NR.ioctl": 16, "NR.mremap": 25, "NR.mincore": 27, "NR.madvise": 28, "NR.clone": 56, "NR.fork": 57,
    "NR.mount": 165, "NR.umount2": 166, "NR.swapon": 167, "NR.swapoff": 168, "NR.gettid": 186,
    "NR.tgkill": 234, "NR.mbind": 237, "NR.vmsplice": 278, "NR.move_pages": 279, "NR.fallocate": 285,
    "NR.pipe2": 293, "NR.getrandom": 318, "NR.memfd_create": 319, "NR.userfaultfd": 323,
    "NR.io_uring_setup": 425, "NR.io_uring_enter": 426, "NR.io_uring_register": 427, "NR.pidfd_open": 434,
    "NR.process_madvise": 440, "NR.capget": 125, "NR.capset": 126,
    "MPOL_LOCAL": 4, "MPOL_MF_MOVE": 2, "MPOL_MF_MOVE_ALL": 4, "CLONE_VM": 0x100,
    "PR_SET_MEMORY_MERGE": 67, "PR_GET_MEMORY_MERGE": 68,
    "IoringOp.NOP": 0, "IoringOp.READ_FIXED": 4, "IoringOp.WRITE_FIXED": 5,
    "IoringRegister.REGISTER_BUFFERS": 0, "IoringRegister.UNREGISTER_BUFFERS": 1,
    "IORING_OFF_SQ_RING": 0, "IORING_OFF_CQ_RING": 0x8000000, "IORING_OFF_SQES": 0x10000000,
    "IORING_FEAT_SINGLE_MMAP": 1, "IORING_ENTER_GETEVENTS": 1,
    "SIGBUS": 7, "SA_SIGINFO": 4, "SA_RESTORER": 0x04000000, "SIGSET_SIZE": 8,
    "UFFD_API_IOCTLS": 0x8000000000000003, "ALL_FEATURES": (1 << 17) - 1,
    "Feature.MOVE": 1 << 16, "Feature.WP_ASYNC": 1 << 15,
    "PM_UFFD_WP": 1 << 57, "PM_MMAP_EXCLUSIVE": 1 << 56, "PM_PRESENT": 1 << 63,
    "KPF.THP": 1 << 22, "KPF.COMPOUND_HEAD": 1 << 15,
    "Event.PAGEFAULT": 0x12, "Event.UNMAP": 0x16, "Madv.COLLAPSE": 25, "Madv.POPULATE_WRITE": 23,
    "LINUX_CAPABILITY_VERSION_3": 0x20080522, "LINUX_CAPABILITY_U32S_3": 2, "CAP_SYS_PTRACE": 19, "CAP_IPC_LOCK": 14,
    "TMPFS_MAGIC": 0x01021994, "HUGETLBFS_MAGIC": 0x958458F6, "BTRFS_SUPER_MAGIC": 0x9123683E,
    "EXT4_SUPER_MAGIC": 0xEF53, "XFS_SUPER_MAGIC": 0x58465342,
}


def number_errors(expected: dict[str, int]) -> list[str]:
    """Every name whose value in lib.kernel.abi differs from ``expected`` ([] when none)."""
    errors = []
    for name, value in expected.items():
        obj: object = abi
        for part in name.split("."):
            obj = getattr(obj, part, None)
        if obj is None or int(obj) != value:
            errors.append(f"{name} = {obj!r}, expected {value:#x}")
    return errors


def test_numbers():
    assert number_errors(NUMBERS) == []


def test_every_syscall_number_is_checked():
    assert {f"NR.{n.name}" for n in abi.NR} <= set(NUMBERS)


def test_number_check_catches_a_wrong_number():
    """Negative control: i386's rt_sigaction (174) and a neighbouring opcode are caught."""
    assert number_errors({"NR.rt_sigaction": 174, "IoringOp.WRITE_FIXED": 4, "NR.no_such": 1}) == [
        "NR.rt_sigaction = <NR.rt_sigaction: 13>, expected 0xae",
        "IoringOp.WRITE_FIXED = <IoringOp.WRITE_FIXED: 5>, expected 0x4",
        "NR.no_such = None, expected 0x1",
    ]


def test_restorer_code_calls_rt_sigreturn():
    """mov $15, %rax; syscall (x86_64 encoding: REX.W C7 /0 imm32, then 0F 05)."""
    assert abi.RESTORE_RT_CODE.hex() == "48c7c00f0000000f05"


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
