"""Unit tests of lib.runner.vm_console on recorded console streams (no VM needed).

The captures in tests/data/console/ are described in its README.md; the time-out tests
drive the watchdog with an explicit clock.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lib.runner.vm_console import BootStage, ConsoleWatchdog, Verdict, classify_kernel_line, parse_console

DATA = Path(__file__).parent / "data" / "console"


def capture(name: str) -> str:
    """A recorded console, exactly as received (``\\r\\n`` endings kept)."""
    return (DATA / name).read_bytes().decode("utf-8", "replace")


def feed_in_chunks(text: str, size: int, **kwargs: float) -> ConsoleWatchdog:
    watchdog = ConsoleWatchdog(**kwargs)
    for i in range(0, len(text), size):
        watchdog.feed(text[i : i + size], 0.0)
    return watchdog


# ---------------------------------------------------------------- real captures


def test_clean_run_rejoins_tap_line_cut_by_printk() -> None:
    result = parse_console(capture("clean_tap_split.log"))
    assert result.verdict is Verdict.OK
    assert result.stage is BootStage.EXITED
    assert result.exit_code == 1
    assert result.splats == []  # sysrq "Show Memory" output is not a splat
    assert "not ok 2 cow_thp_fork # exit=1" in result.tap_lines
    assert result.tap_lines[:3] == ["TAP version 13", "1..3", "# [RUN] wp-fork on anon"]
    assert result.tap_lines[-1].startswith("# Totals: pass:1 fail:1")
    assert result.running_case is None
    assert result.last_case == "Basic COW after fork() with base page"
    assert result.tail[-1].endswith("] reboot: Power down")
    assert len(result.tail) == 60


@pytest.mark.parametrize("size", [1, 2, 7, 64, 4096])
def test_chunking_does_not_change_the_result(size: int) -> None:
    text = capture("clean_tap_split.log")
    whole = parse_console(text)
    watchdog = feed_in_chunks(text, size)
    result = watchdog.finish(0.0)
    assert result.tap_lines == whole.tap_lines
    assert result.tail == whole.tail
    assert (result.verdict, result.exit_code) == (whole.verdict, whole.exit_code)


def test_guest_lines_are_reported_once_final() -> None:
    watchdog = ConsoleWatchdog()
    lines = watchdog.feed(capture("clean_tap_split.log"), 0.0) + watchdog.flush(0.0)
    guest = [line.text for line in lines if not line.kernel]
    assert guest.count("not ok 2 cow_thp_fork # exit=1") == 1
    assert "rk # exit=1" not in guest
    # Boot noise without timestamps is never glued together.
    assert "Probing EDD (edd=off to disable)... ok" in guest
    kernel = [line.text for line in lines if line.kernel]
    assert "sysrq: Show Memory" in kernel  # the timestamp is stripped from kernel lines


def test_panic_capture_names_the_running_case() -> None:
    result = parse_console(capture("panic_sysrq.log"))
    assert result.verdict is Verdict.PANIC
    assert result.running_case == "crash case"
    assert result.last_case == "wp-fork on anon"
    assert result.exit_code is None
    assert result.stage is BootStage.GUEST
    assert result.splats[0].kind is Verdict.PANIC
    assert result.splats[0].line == "Kernel panic - not syncing: sysrq triggered crash"
    assert result.splats[0].case == "crash case"
    assert "crash case" in result.reason
    assert any("sysrq_handle_crash" in line for line in result.tail)


def test_no_boot_capture() -> None:
    result = parse_console(capture("no_boot.log"), killed=Verdict.NO_BOOT)
    assert result.verdict is Verdict.NO_BOOT
    assert result.stage < BootStage.GUEST
    assert result.killed is Verdict.NO_BOOT


def test_console_ending_before_the_guest_starts_is_no_boot() -> None:
    # QEMU exiting early (e.g. a bad image) without a panic: no_boot even if not killed.
    result = parse_console(capture("no_boot.log"))
    assert result.verdict is Verdict.NO_BOOT


def test_stall_capture() -> None:
    result = parse_console(capture("stall.log"), killed=Verdict.STALLED)
    assert result.verdict is Verdict.STALLED
    assert result.running_case == "sleepy case"
    assert result.exit_code is None


# ---------------------------------------------------------------- synthesized splats


def test_warning_mid_case() -> None:
    result = parse_console(capture("warning_midcase.log"))
    assert result.verdict is Verdict.WARNING
    assert [s.kind for s in result.splats] == [Verdict.WARNING]
    assert result.splats[0].case == "cow_thp_fork"
    assert result.splats[0].line.startswith("WARNING: CPU: 1 PID: 143 at mm/huge_memory.c:2465")
    assert result.exit_code == 1  # a WARNING does not stop the run
    assert "ok 2 cow_thp_fork" in result.tap_lines


def test_oops_mid_case_outranks_its_bug_line() -> None:
    result = parse_console(capture("oops_midcase.log"))
    assert result.verdict is Verdict.OOPS
    assert [s.kind for s in result.splats] == [Verdict.BUG, Verdict.OOPS]
    assert all(s.case == "cow_thp_fork" for s in result.splats)
    assert "not ok 2 cow_thp_fork # exit=-9" in result.tap_lines


def test_bad_page_state_is_bug() -> None:
    result = parse_console(capture("bad_page_midcase.log"))
    assert result.verdict is Verdict.BUG
    assert result.splats[0].line.startswith("BUG: Bad page state in process python3")
    assert result.splats[0].case == "cow_thp_fork"


def test_oops_then_stall_reports_oops() -> None:
    text = capture("oops_midcase.log").split("not ok 2 cow_thp_fork")[0]
    result = parse_console(text, killed=Verdict.STALLED)
    assert result.verdict is Verdict.OOPS
    assert result.running_case == "cow_thp_fork"
    assert result.killed is Verdict.STALLED


def test_warning_then_stall_reports_stall() -> None:
    text = capture("warning_midcase.log").split("ok 2 cow_thp_fork")[0]
    assert parse_console(text, killed=Verdict.STALLED).verdict is Verdict.STALLED


# ---------------------------------------------------------------- line handling

_BOOTED = "[    0.000000] Linux version 6.1.0\r\nKMM-GUEST-START\r\n"


def test_split_tap_line_with_spurious_newline() -> None:
    # The shape seen with a simulated console: fragment, newline, printk, continuation.
    text = (
        _BOOTED + "# [RUN] cow_thp_fork\r\n"
        "not ok 2 cow_thp_fo\r\n"
        "[   12.000001] BUG: Bad page state in process python3  pfn:1a2b3\r\n"
        "[   12.000002] page dumped because: nonzero mapcount\r\n"
        "rk # exit=1\r\n"
        "ok 3 next\r\nKMM-EXIT=1\r\n"
    )
    result = parse_console(text)
    assert result.tap_lines == ["# [RUN] cow_thp_fork", "not ok 2 cow_thp_fork # exit=1", "ok 3 next"]
    assert result.verdict is Verdict.BUG
    assert result.splats[0].after_case == "cow_thp_fo"  # known only up to the cut
    assert result.last_case == "next"


def test_line_after_printk_that_starts_a_tap_line_is_not_joined() -> None:
    text = _BOOTED + "ok 1 a\r\n[    1.000000] hello\r\nok 2 b\r\n# diag\r\nKMM-EXIT=0\r\n"
    assert parse_console(text).tap_lines == ["ok 1 a", "ok 2 b", "# diag"]


def test_fragment_glued_twice() -> None:
    text = _BOOTED + "not ok 7 lo[    1.100000] a\r\nng na[    1.200000] b\r\nme # TIMEOUT 30 seconds\r\nKMM-EXIT=1\r\n"
    result = parse_console(text)
    assert result.tap_lines == ["not ok 7 long name # TIMEOUT 30 seconds"]
    assert result.last_case == "long name"


@pytest.mark.parametrize(
    "text",
    [
        "KMM-GUEST-START\nok 1 a\nKMM-EXIT=0\n",
        "KMM-GUEST-START\r\nok 1 a\r\nKMM-EXIT=0\r\n",
        "KMM-GUEST-START\r\r\nok 1 a\r\r\nKMM-EXIT=0\r\r\n",
        "KMM-GUEST-START\r\nok 1 a\r\nKMM-EXIT=0",  # no final newline
    ],
)
def test_line_endings(text: str) -> None:
    result = parse_console(text)
    assert result.tap_lines == ["ok 1 a"]
    assert result.exit_code == 0
    assert result.verdict is Verdict.OK


def test_crlf_split_across_chunks() -> None:
    watchdog = ConsoleWatchdog()
    for chunk in ["KMM-GUEST-START\r", "\nok 1 a\r", "\n", "KMM-EXIT=", "3\r", "\n"]:
        watchdog.feed(chunk, 0.0)
    result = watchdog.finish(0.0)
    assert (result.tap_lines, result.exit_code) == (["ok 1 a"], 3)


def test_guest_text_that_looks_like_a_splat_is_not_one() -> None:
    text = _BOOTED + "# BUG: not a kernel line\r\nWARNING: printed by a guest tool\r\nKMM-EXIT=0\r\n"
    result = parse_console(text)
    assert result.splats == []
    assert result.verdict is Verdict.OK


def test_kernel_without_printk_time() -> None:
    text = (
        "Linux version 6.1.0\nKMM-GUEST-START\n# [RUN] x\n"
        "WARNING: CPU: 0 PID: 1 at mm/memory.c:1 f+0x0/0x1\nok 1 x\nKMM-EXIT=0\n"
    )
    result = parse_console(text)
    assert result.verdict is Verdict.WARNING
    assert result.splats[0].case == "x"


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        ("[    5.100000] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000009", Verdict.PANIC),
        ("[    5.100000] Oops: 0002 [#1] PREEMPT SMP NOPTI", Verdict.OOPS),
        ("[    5.100000] general protection fault, probably for non-canonical address 0xdead: 0000 [#1]", Verdict.OOPS),
        ("[    5.100000] kernel BUG at mm/rmap.c:1234!", Verdict.BUG),
        ("[    5.100000] watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [python3:200]", Verdict.BUG),
        ("[    5.100000] INFO: task python3:200 blocked for more than 120 seconds.", Verdict.BUG),
        ("[    5.100000] rcu: INFO: rcu_preempt self-detected stall on CPU", Verdict.BUG),
        ("[    5.100000] BUG: KASAN: use-after-free in handle_userfault+0x1/0x2", Verdict.BUG),
        ("[    5.100000][  T200] WARNING: CPU: 0 PID: 200 at mm/userfaultfd.c:100 f+0x0/0x1", Verdict.WARNING),
        ("[    5.100000] sysrq: Show Memory", None),
        ("[    5.100000] ------------[ cut here ]------------", None),
        ("[    0.000000] Kernel command line: console=ttyS0 panic=-1 oops=panic", None),
    ],
)
def test_classify_kernel_line(line: str, kind: Verdict | None) -> None:
    assert classify_kernel_line(line) is kind


# ---------------------------------------------------------------- clock-driven deadlines


def test_hung_boot_is_no_boot_after_the_boot_deadline() -> None:
    watchdog = ConsoleWatchdog(start=100.0, boot_timeout=60, stall_timeout=10, vm_timeout=900)
    watchdog.feed("Probing EDD (edd=off to disable)... ok\r\n", 101.0)
    assert watchdog.stage is BootStage.FIRMWARE
    assert watchdog.check(130.0) is None  # silence before boot is not a stall
    assert watchdog.next_deadline(130.0) == pytest.approx(30.0)
    assert watchdog.check(160.0) is Verdict.NO_BOOT
    result = watchdog.finish(160.0, killed=Verdict.NO_BOOT)
    assert result.verdict is Verdict.NO_BOOT
    assert "stage firmware" in result.reason


def test_stall_is_measured_from_the_last_line() -> None:
    watchdog = ConsoleWatchdog(start=0.0, boot_timeout=60, stall_timeout=30, vm_timeout=900)
    watchdog.feed(_BOOTED + "# [RUN] slow case\r\n", 20.0)
    watchdog.feed("# still here\r\n", 45.0)
    watchdog.feed("partial line without newline", 70.0)  # not progress
    assert watchdog.check(74.9) is None
    assert watchdog.next_deadline(60.0) == pytest.approx(15.0)
    assert watchdog.check(75.0) is Verdict.STALLED
    result = watchdog.finish(75.0, killed=Verdict.STALLED)
    assert result.running_case == "slow case"
    assert result.verdict is Verdict.STALLED


def test_no_stall_after_the_guest_exited() -> None:
    watchdog = ConsoleWatchdog(start=0.0, boot_timeout=60, stall_timeout=30, vm_timeout=900)
    watchdog.feed(_BOOTED + "KMM-EXIT=0\r\n", 10.0)
    assert watchdog.check(100.0) is None
    assert watchdog.check(900.0) is Verdict.TIMEOUT


def test_overall_timeout_despite_progress() -> None:
    watchdog = ConsoleWatchdog(start=0.0, boot_timeout=60, stall_timeout=30, vm_timeout=100)
    watchdog.feed(_BOOTED, 1.0)
    for t in range(10, 100, 10):
        watchdog.feed(f"# tick {t}\r\n", float(t))
        assert watchdog.check(float(t)) is None
    assert watchdog.check(100.0) is Verdict.TIMEOUT
    assert watchdog.finish(100.0, killed=Verdict.TIMEOUT).verdict is Verdict.TIMEOUT


def test_panic_without_reboot_stops_after_grace_or_end_marker() -> None:
    watchdog = ConsoleWatchdog(start=0.0, panic_grace=5)
    watchdog.feed(_BOOTED + "# [RUN] c\r\n[   9.000000] Kernel panic - not syncing: Fatal exception\r\n", 10.0)
    assert watchdog.check(12.0) is None
    assert watchdog.check(15.0) is Verdict.PANIC
    watchdog.feed("[   9.100000] ---[ end Kernel panic - not syncing: Fatal exception ]---\r\n", 11.0)
    assert watchdog.check(11.0) is Verdict.PANIC
    result = watchdog.finish(11.0, killed=Verdict.PANIC)
    assert (result.verdict, result.running_case) == (Verdict.PANIC, "c")


def test_panic_before_the_guest_started() -> None:
    text = (
        "[    1.000000] Linux version 6.1\r\n"
        "[    2.000000] Kernel panic - not syncing: VFS: Unable to mount root fs\r\n"
    )
    result = parse_console(text)
    assert result.verdict is Verdict.PANIC
    assert result.stage is BootStage.KERNEL


def test_splat_after_a_case_finished() -> None:
    text = _BOOTED + "# [RUN] a\r\nok 1 a\r\n[    3.000000] WARNING: CPU: 0 PID: 1 at mm/x.c:1 f\r\nKMM-EXIT=0\r\n"
    splat = parse_console(text).splats[0]
    assert (splat.case, splat.after_case) == (None, "a")


def test_guest_text_with_brackets_is_not_a_printk() -> None:
    text = _BOOTED + "# took [1.5] s [  2.25]\r\nok 1 a\r\nKMM-EXIT=0\r\n"
    assert parse_console(text).tap_lines == ["# took [1.5] s [  2.25]", "ok 1 a"]


def test_run_marker_glued_to_a_printk_names_the_case_at_once() -> None:
    watchdog = ConsoleWatchdog()
    watchdog.feed(_BOOTED + "# [RUN] stuck case[    4.000000] random: crng init done\r\n", 1.0)
    assert watchdog.running_case == "stuck case"
    result = watchdog.finish(2.0, killed=Verdict.STALLED)
    assert result.running_case == "stuck case"
    assert result.tap_lines == ["# [RUN] stuck case"]
