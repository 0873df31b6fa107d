"""The single source of truth for the kernel ABI this suite speaks (x86_64).

Every number here comes from the kernel's UAPI headers: include/uapi/linux/userfaultfd.h,
include/uapi/linux/fs.h (PAGEMAP_SCAN), include/uapi/asm-generic/mman-common.h,
include/uapi/linux/memfd.h, include/uapi/linux/kernel-page-flags.h,
include/uapi/linux/io_uring.h, include/uapi/linux/uio.h, arch/x86/include/uapi/asm/signal.h,
include/uapi/asm-generic/siginfo.h, arch/x86/entry/syscalls/syscall_64.tbl and
Documentation/admin-guide/mm/pagemap.rst.  tests/test_abi.py checks sizes, offsets, the _IOC
encodings and the numbers against the values the kernel headers produce.
"""

from __future__ import annotations

import ctypes
import enum
import struct

# ---------------------------------------------------------------------------------------
# ioctl number encoding (include/uapi/asm-generic/ioctl.h)
_IOC_NRSHIFT, _IOC_TYPESHIFT, _IOC_SIZESHIFT, _IOC_DIRSHIFT = 0, 8, 16, 30
IOC_NONE, IOC_WRITE, IOC_READ = 0, 1, 2


def ioc(direction: int, typ: int, nr: int, size: int) -> int:
    """_IOC(dir, type, nr, size) as the kernel computes it."""
    return (
        (direction << _IOC_DIRSHIFT)
        | (typ << _IOC_TYPESHIFT)
        | (nr << _IOC_NRSHIFT)
        | (size << _IOC_SIZESHIFT)
    )


def io(typ: int, nr: int) -> int:
    return ioc(IOC_NONE, typ, nr, 0)


def ior(typ: int, nr: int, struct: type[ctypes.Structure] | int) -> int:
    return ioc(IOC_READ, typ, nr, _size(struct))


def iow(typ: int, nr: int, struct: type[ctypes.Structure] | int) -> int:
    return ioc(IOC_WRITE, typ, nr, _size(struct))


def iowr(typ: int, nr: int, struct: type[ctypes.Structure] | int) -> int:
    return ioc(IOC_READ | IOC_WRITE, typ, nr, _size(struct))


def _size(struct: type[ctypes.Structure] | int) -> int:
    return struct if isinstance(struct, int) else ctypes.sizeof(struct)


# ---------------------------------------------------------------------------------------
# System call numbers (arch/x86/entry/syscalls/syscall_64.tbl)
class NR(enum.IntEnum):
    mmap = 9
    mprotect = 10
    munmap = 11
    rt_sigaction = 13
    rt_sigreturn = 15
    ioctl = 16
    mremap = 25
    mincore = 27
    madvise = 28
    clone = 56
    fork = 57
    capget = 125
    capset = 126
    mount = 165
    umount2 = 166
    swapon = 167
    swapoff = 168
    gettid = 186
    tgkill = 234
    vmsplice = 278
    move_pages = 279
    fallocate = 285
    pipe2 = 293
    getrandom = 318
    memfd_create = 319
    userfaultfd = 323
    io_uring_setup = 425
    io_uring_enter = 426
    io_uring_register = 427
    pidfd_open = 434
    process_madvise = 440
    mbind = 237


# ---------------------------------------------------------------------------------------
# userfaultfd (include/uapi/linux/userfaultfd.h)
UFFD_API = 0xAA
UFFDIO = 0xAA  # ioctl type
UFFD_USER_MODE_ONLY = 1
O_CLOEXEC = 0o2000000
O_NONBLOCK = 0o4000


class Feature(enum.IntFlag):
    """UFFD_FEATURE_* bits (uffdio_api.features)."""

    PAGEFAULT_FLAG_WP = 1 << 0
    EVENT_FORK = 1 << 1
    EVENT_REMAP = 1 << 2
    EVENT_REMOVE = 1 << 3
    MISSING_HUGETLBFS = 1 << 4
    MISSING_SHMEM = 1 << 5
    EVENT_UNMAP = 1 << 6
    SIGBUS = 1 << 7
    THREAD_ID = 1 << 8
    MINOR_HUGETLBFS = 1 << 9
    MINOR_SHMEM = 1 << 10
    EXACT_ADDRESS = 1 << 11
    WP_HUGETLBFS_SHMEM = 1 << 12
    WP_UNPOPULATED = 1 << 13
    POISON = 1 << 14
    WP_ASYNC = 1 << 15
    MOVE = 1 << 16


ALL_FEATURES = Feature(sum(int(f) for f in Feature))


class RegisterMode(enum.IntFlag):
    MISSING = 1
    WP = 2
    MINOR = 4


class CopyMode(enum.IntFlag):
    DONTWAKE = 1
    WP = 2


ZEROPAGE_MODE_DONTWAKE = 1


class WPMode(enum.IntFlag):
    """uffdio_writeprotect.mode; mode 0 removes protection and wakes waiters."""

    WP = 1
    DONTWAKE = 2


class ContinueMode(enum.IntFlag):
    DONTWAKE = 1
    WP = 2


POISON_MODE_DONTWAKE = 1


class MoveMode(enum.IntFlag):
    DONTWAKE = 1
    ALLOW_SRC_HOLES = 2


class PagefaultFlag(enum.IntFlag):
    """uffd_msg.arg.pagefault.flags."""

    WRITE = 1
    WP = 2
    MINOR = 4


class Event(enum.IntEnum):
    PAGEFAULT = 0x12
    FORK = 0x13
    REMAP = 0x14
    REMOVE = 0x15
    UNMAP = 0x16


class IoctlBit(enum.IntEnum):
    """_UFFDIO_* numbers: both the ioctl nr and the bit in the `ioctls` masks."""

    REGISTER = 0x00
    UNREGISTER = 0x01
    WAKE = 0x02
    COPY = 0x03
    ZEROPAGE = 0x04
    MOVE = 0x05
    WRITEPROTECT = 0x06
    CONTINUE = 0x07
    POISON = 0x08
    API = 0x3F


def ioctl_mask(*bits: IoctlBit) -> int:
    mask = 0
    for bit in bits:
        mask |= 1 << int(bit)
    return mask


UFFD_API_IOCTLS = ioctl_mask(IoctlBit.REGISTER, IoctlBit.UNREGISTER, IoctlBit.API)


class uffdio_api(ctypes.Structure):
    _fields_ = [("api", ctypes.c_uint64), ("features", ctypes.c_uint64), ("ioctls", ctypes.c_uint64)]


class uffdio_range(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class uffdio_register(ctypes.Structure):
    _fields_ = [("range", uffdio_range), ("mode", ctypes.c_uint64), ("ioctls", ctypes.c_uint64)]


class uffdio_copy(ctypes.Structure):
    _fields_ = [
        ("dst", ctypes.c_uint64),
        ("src", ctypes.c_uint64),
        ("len", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("copy", ctypes.c_int64),
    ]


class uffdio_zeropage(ctypes.Structure):
    _fields_ = [("range", uffdio_range), ("mode", ctypes.c_uint64), ("zeropage", ctypes.c_int64)]


class uffdio_writeprotect(ctypes.Structure):
    _fields_ = [("range", uffdio_range), ("mode", ctypes.c_uint64)]


class uffdio_continue(ctypes.Structure):
    _fields_ = [("range", uffdio_range), ("mode", ctypes.c_uint64), ("mapped", ctypes.c_int64)]


class uffdio_poison(ctypes.Structure):
    _fields_ = [("range", uffdio_range), ("mode", ctypes.c_uint64), ("updated", ctypes.c_int64)]


class uffdio_move(ctypes.Structure):
    _fields_ = [
        ("dst", ctypes.c_uint64),
        ("src", ctypes.c_uint64),
        ("len", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("move", ctypes.c_int64),
    ]


class _pagefault_feat(ctypes.Union):
    _pack_ = 1
    _fields_ = [("ptid", ctypes.c_uint32)]


class _msg_pagefault(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("flags", ctypes.c_uint64), ("address", ctypes.c_uint64), ("feat", _pagefault_feat)]


class _msg_fork(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("ufd", ctypes.c_uint32)]


class _msg_remap(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("from_", ctypes.c_uint64), ("to", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _msg_remove(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("start", ctypes.c_uint64), ("end", ctypes.c_uint64)]


class _msg_reserved(ctypes.Structure):
    _pack_ = 1
    _fields_ = [
        ("reserved1", ctypes.c_uint64),
        ("reserved2", ctypes.c_uint64),
        ("reserved3", ctypes.c_uint64),
    ]


class _msg_arg(ctypes.Union):
    _pack_ = 1
    _fields_ = [
        ("pagefault", _msg_pagefault),
        ("fork", _msg_fork),
        ("remap", _msg_remap),
        ("remove", _msg_remove),
        ("reserved", _msg_reserved),
    ]


class uffd_msg(ctypes.Structure):
    _pack_ = 1
    _fields_ = [
        ("event", ctypes.c_uint8),
        ("reserved1", ctypes.c_uint8),
        ("reserved2", ctypes.c_uint16),
        ("reserved3", ctypes.c_uint32),
        ("arg", _msg_arg),
    ]


_STRUCT_CODES = {ctypes.c_uint64: "Q", ctypes.c_int64: "q", ctypes.c_uint32: "I", ctypes.c_int32: "i"}


def packer(cls: type[ctypes.Structure]) -> struct.Struct:
    """The same layout as the ctypes structure ``cls``, as a :class:`struct.Struct` over its
    flattened fields (nested structures inlined, in order).  The fault path packs ioctl
    arguments with it: cheaper than building a ctypes object, and the layout stays defined once,
    here.  Only gap-free structures of fixed-width integers are accepted."""
    codes: list[str] = []

    def flatten(c: type[ctypes.Structure], base: int) -> None:
        for name, typ in c._fields_:
            off = base + getattr(c, name).offset
            if off != struct.calcsize("<" + "".join(codes)):
                raise TypeError(f"{cls.__name__}.{name}: padding before offset {off}")
            if isinstance(typ, type) and issubclass(typ, ctypes.Structure):
                flatten(typ, off)
            else:
                codes.append(_STRUCT_CODES[typ])

    flatten(cls, 0)
    s = struct.Struct("<" + "".join(codes))
    if s.size != ctypes.sizeof(cls):
        raise TypeError(f"{cls.__name__}: packed size {s.size} != {ctypes.sizeof(cls)}")
    return s


UFFDIO_REGISTER = iowr(UFFDIO, IoctlBit.REGISTER, uffdio_register)
# UNREGISTER and WAKE are _IOR although they only pass data in (a historical mistake the
# header's comment keeps for ABI compatibility).
UFFDIO_UNREGISTER = ior(UFFDIO, IoctlBit.UNREGISTER, uffdio_range)
UFFDIO_WAKE = ior(UFFDIO, IoctlBit.WAKE, uffdio_range)
UFFDIO_COPY = iowr(UFFDIO, IoctlBit.COPY, uffdio_copy)
UFFDIO_ZEROPAGE = iowr(UFFDIO, IoctlBit.ZEROPAGE, uffdio_zeropage)
UFFDIO_MOVE = iowr(UFFDIO, IoctlBit.MOVE, uffdio_move)
UFFDIO_WRITEPROTECT = iowr(UFFDIO, IoctlBit.WRITEPROTECT, uffdio_writeprotect)
UFFDIO_CONTINUE = iowr(UFFDIO, IoctlBit.CONTINUE, uffdio_continue)
UFFDIO_POISON = iowr(UFFDIO, IoctlBit.POISON, uffdio_poison)
UFFDIO_API = iowr(UFFDIO, IoctlBit.API, uffdio_api)
USERFAULTFD_IOC_NEW = io(UFFDIO, 0x00)

# ---------------------------------------------------------------------------------------
# PAGEMAP_SCAN (include/uapi/linux/fs.h, since 6.7)
PM_SCAN_WP_MATCHING = 1
PM_SCAN_CHECK_WPASYNC = 2


class PageIs(enum.IntFlag):
    WPALLOWED = 1 << 0
    WRITTEN = 1 << 1
    FILE = 1 << 2
    PRESENT = 1 << 3
    SWAPPED = 1 << 4
    PFNZERO = 1 << 5
    HUGE = 1 << 6
    SOFT_DIRTY = 1 << 7
    GUARD = 1 << 8


class page_region(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("end", ctypes.c_uint64), ("categories", ctypes.c_uint64)]


class pm_scan_arg(ctypes.Structure):
    _fields_ = [
        ("size", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("start", ctypes.c_uint64),
        ("end", ctypes.c_uint64),
        ("walk_end", ctypes.c_uint64),
        ("vec", ctypes.c_uint64),
        ("vec_len", ctypes.c_uint64),
        ("max_pages", ctypes.c_uint64),
        ("category_inverted", ctypes.c_uint64),
        ("category_mask", ctypes.c_uint64),
        ("category_anyof_mask", ctypes.c_uint64),
        ("return_mask", ctypes.c_uint64),
    ]


PAGEMAP_SCAN = iowr(ord("f"), 16, pm_scan_arg)

# ---------------------------------------------------------------------------------------
# /proc/<pid>/pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst)
PM_PFN_MASK = (1 << 55) - 1
PM_SOFT_DIRTY = 1 << 55
PM_MMAP_EXCLUSIVE = 1 << 56
PM_UFFD_WP = 1 << 57
PM_GUARD_REGION = 1 << 58
PM_FILE = 1 << 61
PM_SWAP = 1 << 62
PM_PRESENT = 1 << 63


class KPF(enum.IntFlag):
    """/proc/kpageflags bits (include/uapi/linux/kernel-page-flags.h)."""

    LOCKED = 1 << 0
    REFERENCED = 1 << 2
    UPTODATE = 1 << 3
    DIRTY = 1 << 4
    LRU = 1 << 5
    ACTIVE = 1 << 6
    SLAB = 1 << 7
    WRITEBACK = 1 << 8
    RECLAIM = 1 << 9
    BUDDY = 1 << 10
    MMAP = 1 << 11
    ANON = 1 << 12
    SWAPCACHE = 1 << 13
    SWAPBACKED = 1 << 14
    COMPOUND_HEAD = 1 << 15
    COMPOUND_TAIL = 1 << 16
    HUGE = 1 << 17
    UNEVICTABLE = 1 << 18
    HWPOISON = 1 << 19
    NOPAGE = 1 << 20
    KSM = 1 << 21
    THP = 1 << 22
    OFFLINE = 1 << 23
    ZERO_PAGE = 1 << 24
    IDLE = 1 << 25
    PGTABLE = 1 << 26


# ---------------------------------------------------------------------------------------
# mmap / madvise / memfd / mremap / fallocate (asm-generic/mman-common.h, linux/memfd.h)
PROT_NONE, PROT_READ, PROT_WRITE, PROT_EXEC = 0, 1, 2, 4

MAP_SHARED = 0x01
MAP_PRIVATE = 0x02
MAP_FIXED = 0x10
MAP_ANONYMOUS = 0x20
MAP_NORESERVE = 0x4000
MAP_POPULATE = 0x8000
MAP_HUGETLB = 0x40000
MAP_FIXED_NOREPLACE = 0x100000
MAP_FAILED = ctypes.c_void_p(-1).value

HUGE_SHIFT = 26  # MAP_HUGE_SHIFT == MFD_HUGE_SHIFT


def huge_size_flag(size: int) -> int:
    """MAP_HUGE_<size>/MFD_HUGE_<size>: log2(bytes) in bits 26..31."""
    if size <= 0 or size & (size - 1):
        raise ValueError(f"huge page size {size} is not a power of two")
    return (size.bit_length() - 1) << HUGE_SHIFT


class Madv(enum.IntEnum):
    NORMAL = 0
    RANDOM = 1
    SEQUENTIAL = 2
    WILLNEED = 3
    DONTNEED = 4
    FREE = 8
    REMOVE = 9
    DONTFORK = 10
    DOFORK = 11
    MERGEABLE = 12
    UNMERGEABLE = 13
    HUGEPAGE = 14
    NOHUGEPAGE = 15
    DONTDUMP = 16
    DODUMP = 17
    WIPEONFORK = 18
    KEEPONFORK = 19
    COLD = 20
    PAGEOUT = 21
    POPULATE_READ = 22
    POPULATE_WRITE = 23
    DONTNEED_LOCKED = 24
    COLLAPSE = 25
    HWPOISON = 100
    SOFT_OFFLINE = 101
    GUARD_INSTALL = 102
    GUARD_REMOVE = 103


MFD_CLOEXEC = 0x1
MFD_ALLOW_SEALING = 0x2
MFD_HUGETLB = 0x4
MFD_NOEXEC_SEAL = 0x8
MFD_EXEC = 0x10

MREMAP_MAYMOVE = 1
MREMAP_FIXED = 2
MREMAP_DONTUNMAP = 4

FALLOC_FL_KEEP_SIZE = 1
FALLOC_FL_PUNCH_HOLE = 2

SPLICE_F_GIFT = 8

# mbind(2) (include/uapi/linux/mempolicy.h), clone(2) (include/uapi/linux/sched.h)
MPOL_LOCAL = 4
MPOL_MF_MOVE = 1 << 1
MPOL_MF_MOVE_ALL = 1 << 2
# prctl(2) (include/uapi/linux/prctl.h)
PR_SET_MEMORY_MERGE = 67
PR_GET_MEMORY_MERGE = 68
CLONE_VM = 0x00000100

# clear_refs values (fs/proc/task_mmu.c)
CLEAR_REFS_SOFT_DIRTY = 4

# ---------------------------------------------------------------------------------------
# gup_test (mm/gup_test.h), debugfs file /sys/kernel/debug/gup_test


class pin_longterm_test(ctypes.Structure):
    _fields_ = [
        ("addr", ctypes.c_uint64),
        ("size", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("padding", ctypes.c_uint32),
    ]


GUP_TEST_TYPE = ord("g")
PIN_LONGTERM_TEST_START = iow(GUP_TEST_TYPE, 7, pin_longterm_test)
PIN_LONGTERM_TEST_STOP = io(GUP_TEST_TYPE, 8)
PIN_LONGTERM_TEST_READ = iow(GUP_TEST_TYPE, 9, 8)
PIN_LONGTERM_TEST_FLAG_USE_WRITE = 1
PIN_LONGTERM_TEST_FLAG_USE_FAST = 2


# ---------------------------------------------------------------------------------------
# struct iovec (include/uapi/linux/uio.h)
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


# ---------------------------------------------------------------------------------------
# io_uring (include/uapi/linux/io_uring.h): what a fixed-buffer write needs
class io_sqring_offsets(ctypes.Structure):
    _fields_ = [
        ("head", ctypes.c_uint32), ("tail", ctypes.c_uint32), ("ring_mask", ctypes.c_uint32),
        ("ring_entries", ctypes.c_uint32), ("flags", ctypes.c_uint32), ("dropped", ctypes.c_uint32),
        ("array", ctypes.c_uint32), ("resv1", ctypes.c_uint32), ("user_addr", ctypes.c_uint64),
    ]


class io_cqring_offsets(ctypes.Structure):
    _fields_ = [
        ("head", ctypes.c_uint32), ("tail", ctypes.c_uint32), ("ring_mask", ctypes.c_uint32),
        ("ring_entries", ctypes.c_uint32), ("overflow", ctypes.c_uint32), ("cqes", ctypes.c_uint32),
        ("flags", ctypes.c_uint32), ("resv1", ctypes.c_uint32), ("user_addr", ctypes.c_uint64),
    ]


class io_uring_params(ctypes.Structure):
    _fields_ = [
        ("sq_entries", ctypes.c_uint32), ("cq_entries", ctypes.c_uint32), ("flags", ctypes.c_uint32),
        ("sq_thread_cpu", ctypes.c_uint32), ("sq_thread_idle", ctypes.c_uint32), ("features", ctypes.c_uint32),
        ("wq_fd", ctypes.c_uint32), ("resv", ctypes.c_uint32 * 3),
        ("sq_off", io_sqring_offsets), ("cq_off", io_cqring_offsets),
    ]


class io_uring_sqe(ctypes.Structure):
    """The 64-byte SQE; of each union the member a WRITE_FIXED uses (off, addr, rw_flags,
    buf_index, splice_fd_in, addr3)."""

    _fields_ = [
        ("opcode", ctypes.c_uint8), ("flags", ctypes.c_uint8), ("ioprio", ctypes.c_uint16),
        ("fd", ctypes.c_int32), ("off", ctypes.c_uint64), ("addr", ctypes.c_uint64),
        ("len", ctypes.c_uint32), ("rw_flags", ctypes.c_uint32), ("user_data", ctypes.c_uint64),
        ("buf_index", ctypes.c_uint16), ("personality", ctypes.c_uint16), ("splice_fd_in", ctypes.c_int32),
        ("addr3", ctypes.c_uint64), ("pad2", ctypes.c_uint64),
    ]


class io_uring_cqe(ctypes.Structure):
    _fields_ = [("user_data", ctypes.c_uint64), ("res", ctypes.c_int32), ("flags", ctypes.c_uint32)]


class IoringOp(enum.IntEnum):
    """enum io_uring_op (the first six; the numbering is fixed ABI)."""

    NOP = 0
    READV = 1
    WRITEV = 2
    FSYNC = 3
    READ_FIXED = 4
    WRITE_FIXED = 5


class IoringRegister(enum.IntEnum):
    """io_uring_register(2) opcodes (enum io_uring_register_op)."""

    REGISTER_BUFFERS = 0
    UNREGISTER_BUFFERS = 1


IORING_OFF_SQ_RING = 0
IORING_OFF_CQ_RING = 0x8000000
IORING_OFF_SQES = 0x10000000
IORING_FEAT_SINGLE_MMAP = 1 << 0
IORING_ENTER_GETEVENTS = 1 << 0

# ---------------------------------------------------------------------------------------
# signals (x86_64): rt_sigaction(2)'s struct sigaction is the kernel's, not glibc's
# (arch/x86/include/uapi/asm/signal.h; the kernel's own in include/linux/signal_types.h):
# handler, flags, restorer, then the mask last (sigset_t: _NSIG = 64 bits, one word).
SIGBUS = 7
SA_SIGINFO = 0x00000004
SA_RESTORER = 0x04000000
SIGSET_SIZE = 8  # rt_sigaction's sigsetsize argument must equal sizeof(sigset_t)


class sigaction(ctypes.Structure):
    _fields_ = [
        ("handler", ctypes.c_void_p), ("flags", ctypes.c_ulong), ("restorer", ctypes.c_void_p),
        ("mask", ctypes.c_uint64),
    ]


# x86_64 returns from a handler through sa_restorer, which must call rt_sigreturn(2)
# (arch/x86/kernel/signal_64.c: no SA_RESTORER, no frame): mov $NR_rt_sigreturn, %rax; syscall
RESTORE_RT_CODE = b"\x48\xc7\xc0" + int(NR.rt_sigreturn).to_bytes(4, "little") + b"\x0f\x05"


class siginfo(ctypes.Structure):
    """siginfo_t (include/uapi/asm-generic/siginfo.h, 64-bit): three ints, then the union at 16
    (__ARCH_SI_PREAMBLE_SIZE); SIGBUS/SIGSEGV put si_addr first in it.  SI_MAX_SIZE is 128."""

    _fields_ = [
        ("signo", ctypes.c_int32), ("errno", ctypes.c_int32), ("code", ctypes.c_int32),
        ("_pad0", ctypes.c_int32), ("addr", ctypes.c_uint64), ("_rest", ctypes.c_uint8 * 104),
    ]


# ---------------------------------------------------------------------------------------
# fstatfs(2): struct statfs (x86_64, include/uapi/asm-generic/statfs.h with
# __statfs_word = long) and the file system magics gup_longterm.c tells apart
# (include/uapi/linux/magic.h)


class statfs(ctypes.Structure):
    _fields_ = [
        ("f_type", ctypes.c_long), ("f_bsize", ctypes.c_long), ("f_blocks", ctypes.c_uint64),
        ("f_bfree", ctypes.c_uint64), ("f_bavail", ctypes.c_uint64), ("f_files", ctypes.c_uint64),
        ("f_ffree", ctypes.c_uint64), ("f_fsid", ctypes.c_int32 * 2), ("f_namelen", ctypes.c_long),
        ("f_frsize", ctypes.c_long), ("f_flags", ctypes.c_long), ("f_spare", ctypes.c_long * 4),
    ]


TMPFS_MAGIC = 0x01021994
HUGETLBFS_MAGIC = 0x958458F6
BTRFS_SUPER_MAGIC = 0x9123683E
EXT4_SUPER_MAGIC = 0xEF53
XFS_SUPER_MAGIC = 0x58465342


# ---------------------------------------------------------------------------------------
# capabilities (include/uapi/linux/capability.h): capget(2)/capset(2) take a header and,
# for _LINUX_CAPABILITY_VERSION_3, two data structs (capabilities 0-31, 32-63)
LINUX_CAPABILITY_VERSION_3 = 0x20080522
LINUX_CAPABILITY_U32S_3 = 2
CAP_IPC_LOCK = 14
CAP_SYS_PTRACE = 19


class cap_user_header(ctypes.Structure):
    """struct __user_cap_header_struct."""

    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int32)]


class cap_user_data(ctypes.Structure):
    """struct __user_cap_data_struct."""

    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]
