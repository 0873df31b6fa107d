"""The userfaultfd operation matrix, as data: ONE table of documented behaviour.

Each :class:`Row` is one documented outcome of one operation variant: the operation
(``UFFDIO_COPY``), the variant (``MODE_WP``), the outcome in words, the memory kinds it is
checked on (lib.kernel.memtypes' vocabulary; ``()`` = independent of the memory, checked on
``anon``), the expected result (``success`` or an errno name), where the behaviour is documented,
the scenario that checks it (a function of cases/uffd_ops/test_uffd_ops.py), the registration it
needs and the uffd features beyond that registration.  Cells the kernel makes impossible (it
refuses the registration for that memory, or the memory cannot hold what the operation needs)
are listed in ``impossible`` with the reason, never silently dropped.

test_uffd_ops.py crosses the rows with the memory types (anon-thp at every anon THP size the
kernel offers, lib.kernel.system.thp_sizes(); hugetlb kinds at every hugetlb size, the default
first); scripts/coverage-table.py renders the README's coverage table from the same rows.  A row
may need a sysctl at a value for its case (``sysctl``: set before the case by the runner's
``prepare`` hook, put back after it).

Sources: Documentation/admin-guide/mm/userfaultfd.rst ("userfaultfd.rst"), the man pages
ioctl_userfaultfd(2) and UFFDIO_*(2const), include/uapi/linux/userfaultfd.h, and the kernel's
checks in fs/userfaultfd.c and mm/userfaultfd.c (function named).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lib.kernel import abi
from lib.kernel.memtypes import (
    ANON,
    ANON_THP,
    HUGETLB,
    HUGETLB_ANON,
    HUGETLB_PRIVATE,
    SHMEM,
    SHMEM_MAP_PRIVATE,
    SHMEM_PRIVATE,
    MemType,
)

MISSING, WP, MINOR = (int(m) for m in (abi.RegisterMode.MISSING, abi.RegisterMode.WP, abi.RegisterMode.MINOR))

Feature = abi.Feature
SHMEMS = (SHMEM, SHMEM_PRIVATE, SHMEM_MAP_PRIVATE)
HUGES = (HUGETLB, HUGETLB_PRIVATE, HUGETLB_ANON)
ALL = (ANON, *SHMEMS, *HUGES)
ALL_THP = (ANON, ANON_THP, *SHMEMS, *HUGES)
CACHED = (*SHMEMS, HUGETLB, HUGETLB_PRIVATE)  # a page cache page can be put there first
COLUMNS = ALL_THP  # the coverage table's columns
BIG_KINDS = {"all": HUGES, "hugetlb": (HUGETLB,), "none": ()}

REG_SRC = "fs/userfaultfd.c userfaultfd_register(); man UFFDIO_REGISTER(2const)"
MINOR_REFUSED = "REGISTER_MODE_MINOR is refused on anonymous memory (vma_can_userfault(): EINVAL row)"
NO_ZERO_HUGE = "no zero huge page: ZEROPAGE on hugetlb is EINVAL (mfill_atomic_hugetlb(): EINVAL row)"
MOVE_ANON_ONLY = "UFFDIO_MOVE moves private anonymous pages only (validate_move_areas(): EINVAL row)"
NO_CACHE = "a private anonymous hugetlb mapping has no page cache page to map (EFAULT row)"


@dataclass(frozen=True)
class Row:
    op: str
    variant: str
    outcome: str
    kinds: tuple[str, ...]
    expect: str  # "success" or an errno name
    source: str
    scenario: str
    mode: int = MISSING  # how the case registers its range before the operation (0: not at all)
    wants: tuple[str, ...] = ()  # registration features needed: missing/wp/minor (default: from mode)
    features: int = 0  # further UFFD_FEATURE_* bits needed
    pages: int = 1
    # hugetlb sizes beyond the default one: "all" (every hugetlb kind), "hugetlb" (the shared kind
    # only), "none" (default size only): a scenario that fills gigantic pages costs seconds a case
    big: str = "all"
    impossible: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    sysctl: tuple[tuple[str, str], ...] = ()  # (path, value) the case needs, set for it alone
    probes: tuple[str, ...] = ()  # further skip probes of the case, named for the coverage table

    def prepare(self, settings) -> None:
        """In the pytest process, before the case (lib/runner/fixtures.py): the row's sysctls."""
        for path, value in self.sysctl:
            settings.set(path, value)

    @property
    def title(self) -> str:
        return f"{self.op} {self.variant}".strip()

    @property
    def registration_wants(self) -> tuple[str, ...]:
        if self.wants:
            return self.wants
        return tuple(n for n, m in (("missing", MISSING), ("wp", WP), ("minor", MINOR)) if self.mode & m)

    def case_name(self, mem: str | None) -> str:
        where = f" on {mem}" if mem else ""
        return f"{self.title}{where}: {self.outcome}"


def _row(op: str, variant: str, outcome: str, kinds: tuple[str, ...], expect: str, source: str,
         scenario: str, **kw) -> Row:
    imp = kw.pop("impossible", {})
    sysctl = tuple(kw.pop("sysctl", {}).items())
    return Row(op, variant, outcome, kinds, expect, source, scenario, impossible=tuple(imp.items()), sysctl=sysctl,
               **kw)


API = "UFFDIO_API"
REGISTER = "UFFDIO_REGISTER"
UNREG = "UFFDIO_UNREGISTER"
COPY = "UFFDIO_COPY"
ZERO = "UFFDIO_ZEROPAGE"
WPROT = "UFFDIO_WRITEPROTECT"
CONT = "UFFDIO_CONTINUE"
POISON = "UFFDIO_POISON"
MOVE = "UFFDIO_MOVE"
WAKE = "UFFDIO_WAKE"
SYSCALL = "userfaultfd(2)"
DEV_NEW = "USERFAULTFD_IOC_NEW"
UNPRIVILEGED_SYSCTL = "/proc/sys/vm/unprivileged_userfaultfd"

COPY_SRC = "fs/userfaultfd.c userfaultfd_copy(); mm/userfaultfd.c mfill_atomic(); man UFFDIO_COPY(2const)"
ZERO_SRC = "fs/userfaultfd.c userfaultfd_zeropage(); man UFFDIO_ZEROPAGE(2const)"
WP_SRC = ("fs/userfaultfd.c userfaultfd_writeprotect(); mm/userfaultfd.c mwriteprotect_range(); "
          "man UFFDIO_WRITEPROTECT(2const); userfaultfd.rst \"Write Protect Notifications\"")
CONT_SRC = ("fs/userfaultfd.c userfaultfd_continue(); mm/userfaultfd.c mfill_atomic_pte_continue(); "
            "man UFFDIO_CONTINUE(2const); userfaultfd.rst (MINOR faults)")
POISON_SRC = ("fs/userfaultfd.c userfaultfd_poison(); mm/userfaultfd.c mfill_atomic_pte_poison(); "
              "man UFFDIO_POISON(2const)")
MOVE_SRC = "fs/userfaultfd.c userfaultfd_move(); mm/userfaultfd.c move_pages(); userfaultfd.rst \"UFFDIO_MOVE\""
MAPCHG = ("fs/userfaultfd.c (mmap_changing, raised by userfaultfd_remove() until the REMOVE event is read); "
          "mm/userfaultfd.c; man ioctl_userfaultfd(2) EAGAIN; "
          "tools/testing/selftests/mm/uffd-unit-tests.c mmap-changing")
RANGE_SRC = "fs/userfaultfd.c validate_range()/validate_unaligned_range()"
FORK_SRC = ("fs/userfaultfd.c userfaultfd_api() ((features & UFFD_FEATURE_EVENT_FORK) && !capable(CAP_SYS_PTRACE): "
            "-EPERM, err_out: memset); man UFFDIO_API(2const) ERRORS")
OPEN_SRC = ("fs/userfaultfd.c userfaultfd_syscall_allowed() (UFFD_USER_MODE_ONLY always; else CAP_SYS_PTRACE or "
            "sysctl_unprivileged_userfaultfd); Documentation/admin-guide/sysctl/vm.rst unprivileged_userfaultfd; "
            "userfaultfd.rst")
DEV_SRC = ("fs/userfaultfd.c userfaultfd_dev_ioctl() (new_userfaultfd(): no capability check); userfaultfd.rst "
           "\"/dev/userfaultfd\" (access by the device's file permissions)")
SYSCTL_0 = {UNPRIVILEGED_SYSCTL: "0"}
SYSCTL_1 = {UNPRIVILEGED_SYSCTL: "1"}
DROPPED = "without CAP_SYS_PTRACE (dropped)"
PTRACE_PROBE = "CAP_SYS_PTRACE"
FORK_PROBE = "EVENT_FORK offered"  # by the kernel: the case's own uffd needs no EVENT_FORK handshake
DEV_PROBE = "/dev/userfaultfd"

ROWS: tuple[Row, ...] = (
    # -- UFFDIO_API -------------------------------------------------------------------------
    _row(API, "", "reports the API, its features and the API/REGISTER/UNREGISTER ioctls", (), "success",
         "fs/userfaultfd.c userfaultfd_api(); man UFFDIO_API(2const)", "api_handshake", mode=0),
    _row(API, "wrong api", "fails and zeroes the structure", (), "EINVAL",
         "fs/userfaultfd.c userfaultfd_api() (err_out: memset); man UFFDIO_API(2const) ERRORS", "api_bad_version",
         mode=0),
    _row(API, "unknown feature bit", "fails", (), "EINVAL",
         "fs/userfaultfd.c userfaultfd_api() (features & ~UFFD_API_FEATURES); man UFFDIO_API(2const) ERRORS",
         "api_unknown_feature", mode=0),
    _row(API, "twice", "the second handshake fails", (), "EINVAL",
         "fs/userfaultfd.c userfaultfd_api() (features already set); man UFFDIO_API(2const) ERRORS",
         "api_twice", mode=0),
    _row(API, "not done", "any other ioctl before the handshake fails", (), "EINVAL",
         "fs/userfaultfd.c userfaultfd_ioctl() (!userfaultfd_is_initialized)", "api_missing", mode=0),
    _row(API, "EVENT_FORK " + DROPPED, "fails and zeroes the structure; the uffd stays unconfigured: a handshake "
         "without EVENT_FORK then succeeds", (), "EPERM", FORK_SRC, "api_fork_unprivileged", mode=0,
         probes=(FORK_PROBE,)),
    _row(API, "EVENT_FORK with CAP_SYS_PTRACE", "succeeds and reports the feature", (), "success", FORK_SRC,
         "api_fork_privileged", mode=0, features=int(Feature.EVENT_FORK), probes=(PTRACE_PROBE,)),
    # -- userfaultfd(2) and /dev/userfaultfd: who may open a uffd that takes kernel-mode faults --
    _row(SYSCALL, "without UFFD_USER_MODE_ONLY " + DROPPED, "fails under vm.unprivileged_userfaultfd=0", (),
         "EPERM", OPEN_SRC, "open_kernel_faults_unprivileged", mode=0, sysctl=SYSCTL_0),
    _row(SYSCALL, "without UFFD_USER_MODE_ONLY " + DROPPED, "succeeds under vm.unprivileged_userfaultfd=1", (),
         "success", OPEN_SRC, "open_kernel_faults_sysctl", mode=0, sysctl=SYSCTL_1),
    _row(SYSCALL, "without UFFD_USER_MODE_ONLY with CAP_SYS_PTRACE", "succeeds under vm.unprivileged_userfaultfd=0",
         (), "success", OPEN_SRC, "open_kernel_faults_privileged", mode=0, sysctl=SYSCTL_0, probes=(PTRACE_PROBE,)),
    _row(SYSCALL, "UFFD_USER_MODE_ONLY " + DROPPED, "succeeds under vm.unprivileged_userfaultfd=0", (), "success",
         OPEN_SRC, "open_user_mode_only_unprivileged", mode=0, sysctl=SYSCTL_0),
    _row(DEV_NEW, "without UFFD_USER_MODE_ONLY " + DROPPED, "succeeds under vm.unprivileged_userfaultfd=0: only "
         "the device's file permissions gate /dev/userfaultfd", (), "success", DEV_SRC, "open_dev_unprivileged",
         mode=0, sysctl=SYSCTL_0, probes=(DEV_PROBE,)),
    # -- UFFDIO_REGISTER --------------------------------------------------------------------
    _row(REGISTER, "MODE_MISSING", "returns the range's ioctls; a read of a hole raises a MISSING fault", ALL_THP,
         "success", REG_SRC + "; userfaultfd.rst", "register_missing", big="none", mode=0, wants=("missing",)),
    _row(REGISTER, "MODE_WP", "returns the range's ioctls with WRITEPROTECT; a write to a protected page raises "
         "a WP fault", ALL_THP, "success", REG_SRC + "; userfaultfd.rst \"Write Protect Notifications\"",
         "register_wp", big="none", mode=0, wants=("wp",)),
    _row(REGISTER, "MODE_MINOR", "returns the range's ioctls with CONTINUE; a read of a cached page raises a MINOR "
         "fault", CACHED, "success", REG_SRC + "; userfaultfd.rst (MINOR faults)", "register_minor", big="none", mode=0,
         wants=("minor",), impossible={ANON: MINOR_REFUSED, ANON_THP: MINOR_REFUSED, HUGETLB_ANON: NO_CACHE}),
    _row(REGISTER, "MODE_MINOR", "is refused on anonymous memory", (ANON, ANON_THP), "EINVAL",
         REG_SRC + "; include/linux/userfaultfd_k.h vma_can_userfault()", "register_minor_anon", mode=0),
    _row(REGISTER, "mode 0", "fails", (), "EINVAL", REG_SRC + " (!mode)", "register_mode_zero", mode=0),
    _row(REGISTER, "unknown mode bit", "fails", (), "EINVAL", REG_SRC + " (mode & ~UFFD_API_REGISTER_MODES)",
         "register_mode_unknown", mode=0),
    _row(REGISTER, "unaligned start", "fails", (), "EINVAL", RANGE_SRC + "; man UFFDIO_REGISTER(2const) ERRORS",
         "register_unaligned", mode=0),
    _row(REGISTER, "zero length", "fails", (), "EINVAL", RANGE_SRC + " (!len)", "register_zero_len", mode=0),
    _row(REGISTER, "no mapping", "a range without any VMA fails", (), "EINVAL", REG_SRC + " (vma_find() finds none)",
         "register_no_vma", mode=0),
    _row(REGISTER, "across a hole", "registers the VMAs on both sides of the hole", (), "success",
         REG_SRC + " (for_each_vma_range: a hole inside the range is skipped)", "register_across_hole", mode=0),
    _row(REGISTER, "base-page length", "a range not aligned to the huge page size fails", HUGES, "EINVAL",
         REG_SRC + " (hugetlb end alignment)", "register_huge_unaligned", mode=0, wants=("missing",)),
    _row(REGISTER, "other uffd", "a range registered with another userfaultfd fails", ALL, "EBUSY",
         REG_SRC + " (vm_userfaultfd_ctx.ctx != ctx); man UFFDIO_REGISTER(2const) ERRORS", "register_busy",
         mode=0, wants=("missing",)),
    _row(REGISTER, "read-only file", "a shared mapping of a file opened read-only is refused", (SHMEM, HUGETLB),
         "EPERM", REG_SRC + " (!VM_MAYWRITE)", "register_readonly", mode=0, wants=("missing",)),
    # -- UFFDIO_UNREGISTER ------------------------------------------------------------------
    _row(UNREG, "", "wakes a thread blocked in a MISSING fault; later faults are ordinary", ALL, "success",
         "fs/userfaultfd.c userfaultfd_unregister() (wake_userfault); man UFFDIO_UNREGISTER(2const)",
         "unregister_missing", big="none"),
    _row(UNREG, "MODE_WP range", "clears the write protection: PM_UFFD_WP cleared, a write completes", ALL,
         "success", "fs/userfaultfd.c userfaultfd_clear_vma() (uffd_wp_range(..., false))", "unregister_wp",
         big="hugetlb", mode=MISSING | WP),
    _row(UNREG, "MODE_WP range", "leaves a thread blocked in a WP fault asleep until UFFDIO_WAKE", ALL,
         "success", "fs/userfaultfd.c userfaultfd_unregister() (wakes only if userfaultfd_missing(vma))",
         "unregister_wp_blocked", big="none", mode=WP),
    _row(UNREG, "other uffd", "a range registered with another userfaultfd fails", (), "EINVAL",
         "fs/userfaultfd.c userfaultfd_unregister() (vm_userfaultfd_ctx.ctx != ctx)", "unregister_other"),
    _row(UNREG, "unaligned start", "fails", (), "EINVAL", RANGE_SRC, "unregister_unaligned"),
    _row(UNREG, "base-page length", "a range not aligned to the huge page size fails", HUGES, "EINVAL",
         "fs/userfaultfd.c userfaultfd_unregister() (hugetlb alignment)", "unregister_huge_unaligned"),
    # -- UFFDIO_COPY ------------------------------------------------------------------------
    _row(COPY, "", "maps the copy writable and wakes the faulting thread", ALL, "success",
         COPY_SRC + "; userfaultfd.rst", "copy_plain", big="hugetlb"),
    _row(COPY, "MODE_WP", "maps the page write-protected; the next write raises a WP fault", ALL, "success",
         COPY_SRC + " (MFILL_ATOMIC_WP: pte_mkuffd_wp)", "copy_wp", big="hugetlb", mode=MISSING | WP),
    _row(COPY, "MODE_DONTWAKE", "maps the page and leaves the faulting thread asleep until UFFDIO_WAKE", ALL,
         "success", COPY_SRC + " (no wake_userfault)", "copy_dontwake", big="none"),
    _row(COPY, "", "onto a mapped page fails", ALL_THP, "EEXIST",
         COPY_SRC + " (mfill_atomic_install_pte: !pte_none; PMD THP: pmd_trans_huge)", "copy_eexist", big="none"),
    _row(COPY, "", "stops at a mapped page: copies what precedes it", ALL, "EAGAIN",
         COPY_SRC + " (copied != len -> -EAGAIN, copy = bytes copied)", "copy_partial", big="none", pages=2),
    _row(COPY, "", "outside any registered range fails", ALL, "ENOENT",
         COPY_SRC + " (validate_dst_vma: no uffd ctx)", "copy_unregistered", mode=0, wants=("missing",)),
    _row(COPY, "", "across the end of the registered VMA fails", ALL, "ENOENT",
         COPY_SRC + " (validate_dst_vma: dst_end > vm_end)", "copy_cross_vma", pages=2),
    _row(COPY, "", "from an unmapped source fails", ALL, "EFAULT", COPY_SRC + " (copy_from_user fails)",
         "copy_bad_src"),
    _row(COPY, "", "beyond the end of the file fails", (*SHMEMS, HUGETLB), "EFAULT",
         COPY_SRC + " (mfill_file_over_size; mm/hugetlb.c hugetlb_mfill_atomic_pte(): idx >= i_size when "
         "VM_SHARED)", "copy_past_eof"),
    _row(COPY, "", "beyond the end of the file of a private hugetlb mapping succeeds (an anonymous page)",
         (HUGETLB_PRIVATE,), "success", "mm/hugetlb.c hugetlb_mfill_atomic_pte() (i_size checked for VM_SHARED "
         "only: a private mapping gets an anonymous copy)", "copy_past_eof_private", big="none"),
    _row(COPY, "", "after the registering process is gone fails", ALL, "ESRCH",
         COPY_SRC + " (mmget_not_zero fails)", "copy_esrch"),
    _row(COPY, "MODE_WP", "without a WP registration fails", ALL, "EINVAL",
         COPY_SRC + " (MFILL_ATOMIC_WP && !VM_UFFD_WP)", "copy_wp_unregistered"),
    _row(COPY, "unknown mode bit", "fails", (), "EINVAL", COPY_SRC + " (mode & ~(DONTWAKE|WP))",
         "copy_bad_mode"),
    _row(COPY, "unaligned dst", "fails", (), "EINVAL", RANGE_SRC, "copy_unaligned"),
    _row(COPY, "zero length", "fails", (), "EINVAL", RANGE_SRC + " (!len)", "copy_zero_len"),
    _row(COPY, "base-page length", "a range not aligned to the huge page size fails", HUGES, "EINVAL",
         COPY_SRC + " (mfill_atomic_hugetlb: alignment)", "copy_huge_unaligned"),
    # -- UFFDIO_ZEROPAGE --------------------------------------------------------------------
    _row(ZERO, "", "maps zeroes and wakes the faulting thread; a later write raises no userfault", (ANON, *SHMEMS),
         "success", ZERO_SRC + "; mm/userfaultfd.c mfill_atomic_pte_zeropage()", "zeropage_plain",
         impossible={k: NO_ZERO_HUGE for k in HUGES}),
    _row(ZERO, "MODE_DONTWAKE", "maps zeroes and leaves the faulting thread asleep until UFFDIO_WAKE",
         (ANON, ANON_THP, *SHMEMS), "success", ZERO_SRC + " (UFFDIO_ZEROPAGE_MODE_DONTWAKE: no wake_userfault)",
         "zeropage_dontwake", impossible={k: NO_ZERO_HUGE for k in HUGES}),
    _row(ZERO, "", "on hugetlb fails", HUGES, "EINVAL",
         ZERO_SRC + "; mm/userfaultfd.c mfill_atomic_hugetlb() (MFILL_ATOMIC_ZEROPAGE)", "zeropage_hugetlb"),
    _row(ZERO, "", "onto a mapped page fails", (ANON, ANON_THP, *SHMEMS), "EEXIST", ZERO_SRC + " (!pte_none)",
         "zeropage_eexist", impossible={k: NO_ZERO_HUGE for k in HUGES}),
    _row(ZERO, "unknown mode bit", "fails", (), "EINVAL", ZERO_SRC + " (mode & ~DONTWAKE)", "zeropage_bad_mode"),
    _row(ZERO, "unaligned start", "fails", (), "EINVAL", RANGE_SRC, "zeropage_unaligned"),
    # -- UFFDIO_WRITEPROTECT ----------------------------------------------------------------
    _row(WPROT, "MODE_WP", "protects a mapped page: PM_UFFD_WP set, a write raises a WP fault; mode 0 "
         "resolves it", ALL_THP, "success", WP_SRC, "wp_protect", big="hugetlb", mode=MISSING | WP),
    _row(WPROT, "MODE_WP", "on a hole installs a marker: PM_UFFD_WP without PM_PRESENT", (*SHMEMS, *HUGES),
         "success", WP_SRC + "; mm/mprotect.c change_pte_range() (pte markers on file-backed memory)",
         "wp_marker", mode=MISSING | WP),
    _row(WPROT, "MODE_WP", "on an anonymous hole leaves no marker without WP_UNPOPULATED", (ANON,), "success",
         WP_SRC + "; include/linux/userfaultfd_k.h userfaultfd_wp_use_markers()", "wp_anon_hole",
         mode=MISSING | WP),
    _row(WPROT, "MODE_WP with WP_UNPOPULATED", "on an anonymous hole installs a marker", (ANON,), "success",
         WP_SRC + "; UFFD_FEATURE_WP_UNPOPULATED (include/uapi/linux/userfaultfd.h)", "wp_anon_unpopulated",
         mode=MISSING | WP, features=int(Feature.WP_UNPOPULATED)),
    _row(WPROT, "mode 0 with DONTWAKE", "unprotects and leaves the faulting thread asleep until UFFDIO_WAKE",
         ALL, "success", WP_SRC + " (mode_dontwake)", "wp_dontwake", big="none", mode=MISSING | WP),
    _row(WPROT, "", "on a range without WP registration fails", ALL, "ENOENT",
         WP_SRC + " (!userfaultfd_wp(vma))", "wp_unregistered"),
    _row(WPROT, "MODE_WP|MODE_DONTWAKE", "fails", (), "EINVAL", WP_SRC + " (mode_wp && mode_dontwake)",
         "wp_wp_dontwake", mode=MISSING | WP),
    _row(WPROT, "unknown mode bit", "fails", (), "EINVAL", WP_SRC + " (mode & ~(WP|DONTWAKE))", "wp_bad_mode",
         mode=MISSING | WP),
    _row(WPROT, "unaligned start", "fails", (), "EINVAL", RANGE_SRC, "wp_unaligned", mode=MISSING | WP),
    _row(WPROT, "base-page length", "a range not aligned to the huge page size fails", HUGES, "EINVAL",
         WP_SRC + " (hugetlb page_mask)", "wp_huge_unaligned", mode=MISSING | WP),
    # -- UFFDIO_CONTINUE --------------------------------------------------------------------
    _row(CONT, "", "maps the cached page and wakes the MINOR-faulting thread", CACHED, "success", CONT_SRC,
         "continue_plain", big="hugetlb", mode=MINOR,
         impossible={ANON: MINOR_REFUSED, ANON_THP: MINOR_REFUSED, HUGETLB_ANON: NO_CACHE}),
    _row(CONT, "MODE_WP", "maps the cached page write-protected; the next write raises a WP fault", CACHED,
         "success", CONT_SRC + " (MFILL_ATOMIC_WP)", "continue_wp", big="hugetlb", mode=MINOR | WP,
         impossible={ANON: MINOR_REFUSED, ANON_THP: MINOR_REFUSED, HUGETLB_ANON: NO_CACHE}),
    _row(CONT, "MODE_DONTWAKE", "maps the cached page and leaves the MINOR-faulting thread asleep until "
         "UFFDIO_WAKE", CACHED, "success", CONT_SRC + " (UFFDIO_CONTINUE_MODE_DONTWAKE: no wake_userfault)",
         "continue_dontwake", big="none", mode=MINOR,
         impossible={ANON: MINOR_REFUSED, ANON_THP: MINOR_REFUSED, HUGETLB_ANON: NO_CACHE}),
    _row(CONT, "", "without a cached page fails", (*SHMEMS, *HUGES), "EFAULT",
         CONT_SRC + " (shmem_get_folio SGP_NOALLOC / hugetlb: no folio)", "continue_no_page", mode=MINOR),
    _row(CONT, "", "onto a mapped page fails", CACHED, "EEXIST", CONT_SRC + " (!pte_none)", "continue_eexist",
         big="none", mode=MINOR),
    _row(CONT, "", "on anonymous memory fails", (ANON, ANON_THP), "EINVAL",
         "mm/userfaultfd.c mfill_atomic() (!vma_is_shmem && MFILL_ATOMIC_CONTINUE)", "continue_anon"),
    _row(CONT, "MODE_WP", "without a WP registration fails", CACHED, "EINVAL",
         CONT_SRC + " (MFILL_ATOMIC_WP && !VM_UFFD_WP)", "continue_wp_unregistered", mode=MINOR),
    _row(CONT, "unknown mode bit", "fails", (SHMEM,), "EINVAL", CONT_SRC + " (mode & ~(DONTWAKE|WP))",
         "continue_bad_mode", mode=MINOR),
    _row(CONT, "base-page length", "a range not aligned to the huge page size fails", (HUGETLB, HUGETLB_PRIVATE),
         "EINVAL", CONT_SRC + " (mfill_atomic_hugetlb: alignment)", "continue_huge_unaligned", mode=MINOR),
    # -- UFFDIO_POISON ----------------------------------------------------------------------
    _row(POISON, "", "marks a hole poisoned: not present, the next access raises SIGBUS", ALL, "success",
         POISON_SRC + "; mm/memory.c handle_pte_marker() (VM_FAULT_HWPOISON)", "poison_plain",
         features=int(Feature.POISON)),
    _row(POISON, "MODE_DONTWAKE", "poisons the hole and leaves the faulting thread asleep until UFFDIO_WAKE; "
         "woken, it dies of SIGBUS", ALL_THP, "success", POISON_SRC + " (UFFDIO_POISON_MODE_DONTWAKE: no "
         "wake_userfault)", "poison_dontwake", big="none", features=int(Feature.POISON)),
    _row(POISON, "", "onto a mapped page fails", ALL_THP, "EEXIST", POISON_SRC + " (!pte_none)", "poison_eexist",
         big="none", features=int(Feature.POISON)),
    _row(POISON, "unknown mode bit", "fails", (), "EINVAL", POISON_SRC + " (mode & ~DONTWAKE)",
         "poison_bad_mode", features=int(Feature.POISON)),
    _row(POISON, "base-page length", "a range not aligned to the huge page size fails", HUGES, "EINVAL",
         POISON_SRC + " (mfill_atomic_hugetlb: alignment)", "poison_huge_unaligned", features=int(Feature.POISON)),
    # -- UFFDIO_MOVE ------------------------------------------------------------------------
    _row(MOVE, "", "moves the page itself (same PFN) and leaves a hole at the source", (ANON,), "success",
         MOVE_SRC + " (move_present_pte)", "move_plain", features=int(Feature.MOVE),
         impossible={k: MOVE_ANON_ONLY for k in (*SHMEMS, *HUGES)}),
    _row(MOVE, "", "of a large folio moves its content (PMD moved whole, mTHP split)", (ANON_THP,), "success",
         MOVE_SRC + " (move_pages_huge_pmd / split_folio)", "move_thp", features=int(Feature.MOVE)),
    _row(MOVE, "MODE_DONTWAKE", "moves the page (a large folio whole or split) and leaves the faulting thread "
         "asleep until UFFDIO_WAKE", (ANON, ANON_THP), "success", MOVE_SRC + " (UFFDIO_MOVE_MODE_DONTWAKE: no "
         "wake_userfault)", "move_dontwake", features=int(Feature.MOVE),
         impossible={k: MOVE_ANON_ONLY for k in (*SHMEMS, *HUGES)}),
    _row(MOVE, "", "from a hole fails", (ANON,), "ENOENT", MOVE_SRC + " (!ALLOW_SRC_HOLES: -ENOENT)",
         "move_hole", features=int(Feature.MOVE)),
    _row(MOVE, "ALLOW_SRC_HOLES", "from a hole succeeds and leaves the destination empty", (ANON,), "success",
         MOVE_SRC + " (UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES)", "move_hole_allowed", features=int(Feature.MOVE)),
    _row(MOVE, "", "onto a mapped page fails", (ANON,), "EEXIST", MOVE_SRC + " (move_pages_pte: !pte_none)",
         "move_eexist", features=int(Feature.MOVE)),
    _row(MOVE, "", "of a COW-shared page (after fork) fails", (ANON,), "EBUSY",
         MOVE_SRC + " (!PageAnonExclusive -> -EBUSY)", "move_cow_shared", features=int(Feature.MOVE)),
    _row(MOVE, "", "into shared, file or hugetlb memory fails", (*SHMEMS, *HUGES), "EINVAL",
         MOVE_SRC + " (VM_SHARED / validate_move_areas)", "move_not_anon", features=int(Feature.MOVE)),
    _row(MOVE, "", "between VMAs of different protection fails", (ANON,), "EINVAL",
         MOVE_SRC + " (validate_move_areas: VM_ACCESS_FLAGS)", "move_prot_mismatch", features=int(Feature.MOVE)),
    _row(MOVE, "", "to an unregistered destination fails", (ANON,), "EINVAL",
         MOVE_SRC + " (validate_move_areas: dst ctx)", "move_dst_unregistered", mode=0, wants=("missing",),
         features=int(Feature.MOVE)),
    _row(MOVE, "", "from a source range crossing its VMA's end fails", (ANON,), "EINVAL",
         MOVE_SRC + " (src_start + len > src_vma->vm_end)", "move_src_cross", pages=2, features=int(Feature.MOVE)),
    _row(MOVE, "unknown mode bit", "fails", (), "EINVAL", MOVE_SRC + " (mode & ~(DONTWAKE|ALLOW_SRC_HOLES))",
         "move_bad_mode", features=int(Feature.MOVE)),
    _row(MOVE, "unaligned", "fails", (), "EINVAL", RANGE_SRC, "move_unaligned", features=int(Feature.MOVE)),
    _row(MOVE, "", "of a page pinned long-term (io_uring fixed buffer) fails", (ANON,), "EBUSY",
         MOVE_SRC + " (move_present_pte: folio_maybe_dma_pinned -> -EBUSY)", "move_pinned", features=int(Feature.MOVE)),
    # -- while the mappings change: an unread UFFD_EVENT_REMOVE --------------------------------
    _row(COPY, "during an unread REMOVE event", "fails and asks to retry", ALL, "EAGAIN",
         MAPCHG + "; userfaultfd_copy()", "eagain_copy", features=int(Feature.EVENT_REMOVE), big="none"),
    _row(ZERO, "during an unread REMOVE event", "fails and asks to retry", (ANON, *SHMEMS), "EAGAIN",
         MAPCHG + "; userfaultfd_zeropage()", "eagain_zeropage", features=int(Feature.EVENT_REMOVE)),
    _row(WPROT, "during an unread REMOVE event", "fails and asks to retry", ALL, "EAGAIN",
         MAPCHG + "; mwriteprotect_range()", "eagain_writeprotect", mode=MISSING | WP,
         features=int(Feature.EVENT_REMOVE), big="none"),
    _row(CONT, "during an unread REMOVE event", "fails and asks to retry", (*SHMEMS, *HUGES), "EAGAIN",
         MAPCHG + "; userfaultfd_continue()", "eagain_continue", mode=MINOR, features=int(Feature.EVENT_REMOVE),
         big="none"),
    _row(POISON, "during an unread REMOVE event", "fails and asks to retry", ALL, "EAGAIN",
         MAPCHG + "; userfaultfd_poison()", "eagain_poison", features=int(Feature.EVENT_REMOVE | Feature.POISON),
         big="none"),
    _row(MOVE, "during an unread REMOVE event", "fails and asks to retry", (ANON,), "EAGAIN",
         MAPCHG + "; userfaultfd_move()", "eagain_move", features=int(Feature.EVENT_REMOVE | Feature.MOVE)),
    # -- UFFDIO_WAKE ------------------------------------------------------------------------
    _row(WAKE, "", "wakes a thread still missing its page: it faults again at the same address", ALL, "success",
         "fs/userfaultfd.c userfaultfd_wake(); man UFFDIO_WAKE(2const)", "wake_refault", big="none"),
    _row(WAKE, "", "fails on an unaligned range", (), "EINVAL", RANGE_SRC, "wake_unaligned"),
    _row(WAKE, "", "fails on a zero length", (), "EINVAL", RANGE_SRC + " (!len)", "wake_zero_len"),
)


def features_of(row: Row, mt: MemType) -> int:
    """The UFFD_FEATURE_* bits a cell needs: its registration's for the memory type, and the
    row's own (probed before the case: lib.kernel.memtypes.MemType.require)."""
    f = row.features
    for w in row.registration_wants:
        f |= {"missing": mt.missing_feature, "wp": mt.wp_feature, "minor": mt.minor_feature}[w]
    return f


def check_table(rows: tuple[Row, ...] = ROWS) -> list[str]:
    """Problems in the table (the project's tests require none): unknown kinds, duplicate
    names, impossible cells that are also covered, a kind-independent row with cells."""
    problems = []
    seen: set[tuple[str, str]] = set()
    for r in rows:
        key = (r.title, r.outcome)
        if key in seen:
            problems.append(f"duplicate row {r.case_name(None)!r}")
        seen.add(key)
        for k in r.kinds:
            if k not in COLUMNS:
                problems.append(f"{r.case_name(None)}: unknown kind {k}")
        for k, _ in r.impossible:
            if k in r.kinds:
                problems.append(f"{r.case_name(None)}: {k} both covered and impossible")
        if r.expect != "success" and not r.expect.startswith("E"):
            problems.append(f"{r.case_name(None)}: expect {r.expect!r}")
    return problems
