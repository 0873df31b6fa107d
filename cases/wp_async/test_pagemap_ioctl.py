"""tools/testing/selftests/mm/pagemap_ioctl.c, result for result (117, upstream order and names).

What each result checks is the upstream check (see cases/wp_async/pagemap_ioctl.py and
tools/testing/selftests/mm/pagemap_ioctl.c): PAGEMAP_SCAN argument validation, region merging and counts,
max_pages / vec_len / walk_end, PM_SCAN_WP_MATCHING get-and-reset, WP_ASYNC dirty tracking on
anon, THP, hugetlb (SysV, MAP_HUGETLB, memfd) and file memory, mprotect interplay, concurrent
writers, file mappings and the (huge) zero page.  A result SKIPs only from a probe that is
not the operation under test (uffd features, PAGEMAP_SCAN, THP, hugetlb size and pool,
SHM_HUGETLB privilege: ``probe``); upstream keeps the count the same way.  Once the probes
pass, a failing setup step (mmap, UFFDIO_REGISTER, UFFDIO_WRITEPROTECT) is a failure.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from cases.wp_async import pagemap_ioctl
from lib.kernel import needs, setup_step, system

HUGETLB_2M = 2 * system.MiB


@dataclass(frozen=True)
class Step:
    name: str
    block: str
    index: int
    needs: str = ""  # "", "thp", "hugetlb"

    def prepare(self, settings) -> None:
        if self.needs == "thp" and system.pmd_size():
            settings.thp_only_size(system.pmd_size())
        elif self.needs == "hugetlb" and HUGETLB_2M in system.hugetlb_sizes():
            settings.hugetlb(HUGETLB_2M, 4)  # hugetlb_setup_default(4)

    def __str__(self) -> str:
        return self.name


def _steps() -> list[Step]:
    out: list[Step] = []

    def add(block: str, names: list[str], need: str = "") -> None:
        out.extend(Step(n, block, i, need) for i, n in enumerate(names))

    sd = "sanity_tests_sd "
    add("sd_validation", [sd + n for n in (
        "Zero range size is valid", "output buffer must be specified with size", "output buffer can be 0",
        "output buffer can be 0", "wrong flag specified", "flag has extra bits specified",
        "no selection mask is specified", "no return mask is specified", "wrong return mask specified",
        "mixture of correct and wrong flag",
        "PAGEMAP_BITS_ALL can be specified with PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC")])
    add("sd_pattern", [sd + n for n in (
        "Clear area with larger vec size", "Repeated pattern of written and non-written pages",
        "Repeated pattern of written and non-written pages in parts",
        "Repeated pattern of written and non-written pages max_pages",
        "only get 2 written pages and clear them as well")])
    add("sd_two_regions", [sd + "Two regions"])
    add("sd_smaller_max_pages", [sd + "Smaller max_pages"])
    add("sd_smaller_vec", ["Smaller vec"])
    add("sd_walk_end", pagemap_ioctl.WALK_END_NAMES)
    for kind in pagemap_ioctl.BASE_BACKINGS:
        need = "thp" if kind.startswith("Huge page") else ("hugetlb" if kind.startswith("Hugetlb") else "")
        prefix = kind.replace(" (2)", "")
        add("base:" + kind, [f"{prefix} {n}" for n in pagemap_ioctl.BASE_NAMES], need)
    hp = "hpage_unit_tests "
    add("hpage_block1", [hp + n for n in (
        "all new huge page must not be written (dirty)", "all the huge page must not be written",
        "all the huge page must be written and clear", "only middle page written")], "thp")
    add("hpage_first_half", [hp + "clear first half of huge page"], "thp")
    add("hpage_first_half_limited", [hp + "clear first half of huge page with limited buffer"], "thp")
    add("hpage_second_half", [hp + "clear second half huge page"], "thp")
    add("hpage_get_half", [hp + "get half huge page", hp + "get half huge page"], "thp")
    add("simple", ["Test test_simple"])
    add("mprotect", ["mprotect_tests " + n for n in (
        "Both pages written", "Both pages are not written (dirty)", "Both pages written after remap and mprotect",
        "Clear and make the pages written")])
    add("transact", ["transact_test count", "transact_test count", "transact_test Extra pages"])
    st = "sanity_tests "
    add("sanity_masks", [st + n for n in (
        "WP op can be specified with !PAGE_IS_WRITTEN", "required_mask specified", "anyof_mask specified",
        "excluded_mask specified", "required_mask and anyof_mask specified")])
    add("sanity_written_present", [st + n for n in (
        "Get sd and present pages with anyof_mask", "Get all the pages with required_mask",
        "Get sd and present pages with required_mask and anyof_mask", "Don't get sd pages",
        "Don't get present pages")])
    add("sanity_return_mask", [st + "Find written present pages with return mask"])
    add("sanity_mapped_file", [st + "Memory mapped file"])
    add("sanity_rw_file", [st + "Read/write to memory"])
    add("unmapped_region", ["unmapped_region_tests Get status of pages"])
    add("userfaultfd", ["userfaultfd_tests all new pages must not be written (dirty)"])
    add("zeropfn", ["zeropfn_tests all pages must have PFNZERO set",
                    "zeropfn_tests all huge pages must have PFNZERO set"], "thp")
    seen: dict[str, int] = {}
    unique = []
    for s in out:  # upstream repeats some names; TAP names here must be unique
        seen[s.name] = seen.get(s.name, 0) + 1
        unique.append(Step(s.name + (f" ({seen[s.name]})" if seen[s.name] > 1 else ""), s.block, s.index, s.needs))
    return unique


STEPS = _steps()
assert len(STEPS) == 117, len(STEPS)


def block(ctx: pagemap_ioctl.Ctx, name: str):
    """The generator of a block, its memory set up on demand."""
    if name.startswith("base:"):
        kind = name.removeprefix("base:")
        addr, size, _cleanup = pagemap_ioctl.base_backing(kind)
        return pagemap_ioctl.base_tests(ctx, addr, size)
    return getattr(pagemap_ioctl, name)(ctx)


def probe(step: Step) -> None:
    """Every skip of a step comes from here: probes that are not the operation under test
    (uffd features, PAGEMAP_SCAN, THP, the hugetlb size, its pool, privilege)."""
    needs.uffd_features(pagemap_ioctl.FEATURES, user_mode_only=True)
    if not pagemap_ioctl.pagemap_supported():
        pytest.skip("PAGEMAP_SCAN not supported (probe did not give EFAULT)")
    if step.needs == "hugetlb":
        needs.hugetlb_size(HUGETLB_2M)
    if step.block.startswith("hpage"):
        needs.thp(system.pmd_size())
    if step.block.startswith("base:"):
        pagemap_ioctl.require_base_backing(step.block.removeprefix("base:"))


def run_step(step: Step) -> tuple[bool | None, str]:
    """Replay the step's block up to the step; (ok, detail); ok None means skip (a probe
    inside the block: use_zero_page, no THP).  Once probe() passed, an OSError while the
    block sets up its memory, registers or protects it (UFFDIO_REGISTER and
    UFFDIO_WRITEPROTECT raise UffdError, an OSError) is a failure naming the block."""
    probe(step)
    with setup_step.required(f"block {step.block} (uffd features {pagemap_ioctl.FEATURES:#x} offered)"):
        ctx = pagemap_ioctl.Ctx()
    try:
        with setup_step.required(f"block {step.block} up to result {step.index}"):
            gen = block(ctx, step.block)
            for i, result in enumerate(gen):
                if i == step.index:
                    return result
    finally:
        ctx.close()
    raise AssertionError(f"block {step.block} produced no result {step.index}")


@pytest.mark.parametrize("step", STEPS, ids=[s.name for s in STEPS])
def test_pagemap_ioctl(step: Step) -> None:
    ok, detail = run_step(step)
    if ok is None:
        pytest.skip(detail)
    assert ok, detail or "check failed"
