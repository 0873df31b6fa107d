#!/usr/bin/env python3
"""kmm-conformance: run the conformance cases against the running kernel (or another one).

    ./run_suite.py                      every case, live kselftest TAP on stdout
    ./run_suite.py missing cow          areas
    ./run_suite.py 'Basic COW*'         case-name patterns (substring, or glob with * ? [)
    ./run_suite.py --list               the case names
    ./run_suite.py --bisect ...         exit 0 good, 1 bad, 125 cannot test, 255 abort (git bisect run)

Exit codes (kselftest): 0 pass, 1 fail, 4 everything skipped, 2 bad command line (lib/runner/exitcodes.py).
"""

from __future__ import annotations

import argparse
import io
import os
import shlex
import sys
from pathlib import Path

from lib.runner import exitcodes

ROOT = Path(__file__).resolve().parent
VENV_PY = ROOT / ".venv" / "bin" / "python"

EXIT_USAGE = 2
BISECT_GOOD, BISECT_BAD, BISECT_SKIP = 0, 1, 125


def _ensure_interpreter() -> None:
    """Re-run under the project's virtual environment when this interpreter lacks pytest."""
    try:
        import pytest  # noqa: F401
        import pytest_timeout  # noqa: F401
    except ImportError:
        if VENV_PY.exists() and Path(sys.prefix).resolve() != VENV_PY.parent.parent.resolve():
            os.execv(str(VENV_PY), [str(VENV_PY), str(Path(__file__).resolve()), *sys.argv[1:]])
        sys.stderr.write("run_suite.py: error: pytest/pytest-timeout missing; run scripts/bootstrap.sh first\n")
        sys.exit(EXIT_USAGE)


class Parser(argparse.ArgumentParser):
    bisect = False  # --bisect on the command line: a bad one aborts git bisect run (2 would mean "bad")

    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(exitcodes.usage_code(self.bisect))


def cases_dir() -> Path:
    """The case tree: cases/, or $KMM_CASES (the project's tests point it at synthetic cases)."""
    return Path(os.environ.get("KMM_CASES", ROOT / "cases")).resolve()


def areas() -> list[str]:
    return sorted(p.name for p in cases_dir().iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))


def positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return v


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return v


def build_parser() -> Parser:
    p = Parser(prog="run_suite.py", description=__doc__.split("\n")[1].strip(),
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("select", nargs="*", metavar="AREA|PATTERN",
                   help=f"areas ({', '.join(areas())}) or case-name patterns; default: everything")
    p.add_argument("-k", dest="keyword", metavar="EXPR", help="pytest -k expression over test ids")
    p.add_argument("--list", action="store_true", help="print the selected case names and exit")
    p.add_argument("--results", metavar="DIR", help="results folder (default results/<UTC time>-<release>)")
    p.add_argument("--timeout", type=positive_float, default=60.0, metavar="SECONDS",
                   help="per-case deadline (cases may declare a longer one); default 60")
    p.add_argument("--repeat", type=positive_int, default=1, metavar="N",
                   help="run every case N times; a case whose verdicts differ is reported flaky")
    p.add_argument("--bisect", action="store_true",
                   help="git bisect run exit codes: 0 good, 1 bad, 125 cannot test, 255 abort (harness problem)")
    p.add_argument("--no-swap-setup", action="store_true",
                   help="never set up a temporary swap device (swap variants then skip)")
    vm = p.add_argument_group("other kernels (virtme-ng + QEMU)")
    vm.add_argument("--kernel", metavar="IMAGE", help="boot IMAGE and run the selection inside it")
    vm.add_argument("--kernels", nargs="+", metavar="IMAGE",
                    help="run the selection on each kernel in turn (IMAGE `running`: this kernel, no VM); "
                         "put the selection before this option")
    vm.add_argument("--find-first-bad", action="store_true", help="with --kernels: binary search for the first bad")
    vm.add_argument("-j", "--jobs", type=positive_int, metavar="N",
                    help="with --kernels: up to N kernels at once (memory and CPUs split; lib/runner/parallel.py)")
    vm.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"), help="compare two result folders")
    vm.add_argument("--memory", help="guest memory (default 2G, less to fit -j N guests in MemAvailable)")
    vm.add_argument("--cpus", type=positive_int, help="guest CPUs (default 2, at most nproc/N with -j N)")
    vm.add_argument("--kernel-cmdline", default="", metavar="ARGS", help="extra guest kernel command line")
    vm.add_argument("--vm-timeout", type=positive_float, default=900.0, metavar="SECONDS",
                    help="overall deadline for one guest run (default 900)")
    kc = p.add_argument_group("KCIDB (KernelCI) submission (lib/runner/kcidb.py)")
    kc.add_argument("--kcidb", metavar="FILE", help="also write the run as a KCIDB submission (kcidb-io's schema)")
    kc.add_argument("--origin", default="kmm", help="the KCIDB origin submitting it (default kmm)")
    kc.add_argument("--kernel-tree", metavar="DIR", help="the kernel's git tree: its commit, describe and remote")
    kc.add_argument("--from-results", metavar="DIR", help="convert this results folder instead of running")
    return p


def split_selection(select: list[str]) -> tuple[list[str], list[str]]:
    known = areas()
    chosen, patterns = [], []
    for s in select:
        if s in known:
            chosen.append(s)
        elif s.replace("-", "_") in known:
            chosen.append(s.replace("-", "_"))
        else:
            patterns.append(s)
    return chosen, patterns


def pytest_args(args: argparse.Namespace, chosen: list[str], patterns: list[str], results: Path | None,
                tap_fd: int | None) -> list[str]:
    paths = [str(cases_dir() / a) for a in chosen] or [str(cases_dir())]
    out = [
        *paths,
        f"--rootdir={ROOT}",
        "-c", str(ROOT / "pyproject.toml"),
        "-p", "no:cacheprovider",
        "--continue-on-collection-errors",
        "-q",
        "-o", "console_output_style=classic",
        "--timeout=3600",  # pytest-timeout: a backstop only; isolation deadlines do the work
        "--timeout-method=signal",
        f"--kmm-timeout={args.timeout}",
        f"--kmm-repeat={args.repeat}",
    ]
    if args.no_swap_setup:
        out.append("--kmm-no-swap-setup")
    for pat in patterns:
        out.append(f"--kmm-select={pat}")
    if args.keyword:
        out += ["-k", args.keyword]
    if results is not None:
        out.append(f"--kmm-results={results}")
    if tap_fd is not None:
        out.append(f"--kmm-tap-fd={tap_fd}")
    if args.list:
        out.append("--collect-only")
    return out


class RunLog(io.TextIOBase):
    """pytest's own output, to run.log: a write that fails (a full disk) never stops the run,
    and the ``ERROR:`` lines (usage errors) are kept in memory for the one-line message."""

    def __init__(self, path: Path) -> None:
        self.error_lines: list[str] = []
        self._tail = ""
        try:
            self._f: io.TextIOBase | None = open(path, "a")  # noqa: SIM115 - closed by close()
        except OSError:
            self._f = None

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        lines = (self._tail + text).split("\n")
        self._tail = lines.pop()
        self.error_lines += [ln.removeprefix("ERROR: ") for ln in lines if ln.startswith("ERROR: ")]
        if self._f is not None:
            try:
                self._f.write(text)
                self._f.flush()
            except OSError:
                self._f = None
        return len(text)

    def close(self) -> None:
        if self._f is not None:
            try:
                self._f.close()
            except OSError:
                pass
            self._f = None


class RunOutcome:
    """A pytest plugin that hands the runner plugin's final state back to run_suite.py (its
    exit code never depends on reading the results folder back)."""

    run = None

    def pytest_unconfigure(self, config) -> None:
        self.run = config.pluginmanager.get_plugin("kmm-run")


def pytest_main_into(sink, argv: list[str], plugin: object) -> int:
    """pytest.main in this process with its own output (stdout and stderr) sent to ``sink``."""
    import pytest

    old = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = sink
    try:
        return int(pytest.main(argv, plugins=[plugin]))
    finally:
        sys.stdout, sys.stderr = old


def run_pytest(argv: list[str], log_path: Path) -> tuple[int, str, object]:
    """pytest.main in this process; its own output goes to the log, TAP to stdout."""
    import pytest

    log = RunLog(log_path)
    outcome = RunOutcome()
    try:
        code = pytest_main_into(log, argv, outcome)
    finally:
        log.close()
    usage = ""
    if code == pytest.ExitCode.USAGE_ERROR and log.error_lines:
        usage = log.error_lines[-1].split("UsageError: ")[-1]
    return code, usage, outcome.run


def say(line: str) -> None:
    """A line on stdout that a closed stdout (``| head``) never turns into a traceback."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        stdout_gone()


def stdout_gone() -> None:
    """stdout was closed by its reader: point it at /dev/null so nothing fails at exit."""
    fd = os.open(os.devnull, os.O_WRONLY)
    os.dup2(fd, sys.stdout.fileno())
    os.close(fd)


def list_cases(argv: list[str]) -> int:
    import pytest

    sys.path.insert(0, str(ROOT))

    class Lister:
        names: list[str] = []

        def pytest_collection_finish(self, session: pytest.Session) -> None:
            run = session.config.pluginmanager.get_plugin("kmm-run")
            self.names = [run.names[i.nodeid] for i in session.items if i.nodeid in run.names]

    lister = Lister()
    import io

    buf = io.StringIO()
    code = pytest_main_into(buf, argv, lister)
    if code not in (0, 5):
        msg = next((line[7:] for line in buf.getvalue().splitlines() if line.startswith("ERROR: ")), "")
        sys.stderr.write(f"run_suite.py: error: {msg or 'collection failed (see pytest --collect-only cases)'}\n")
        return EXIT_USAGE
    try:
        for n in lister.names:
            sys.stdout.write(n + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # `--list | head`: the reader has what it wanted
        stdout_gone()
    return 0


def resolve_paths(args: argparse.Namespace, cwd: str) -> None:
    """Make every path argument absolute against the caller's directory, before anything (the
    guest, vng, the case children) runs from another directory."""

    def absolute(path: str) -> str:
        return os.path.normpath(os.path.join(cwd, os.path.expanduser(path)))

    if args.kernel:
        args.kernel = absolute(args.kernel)
    if args.kernels:
        args.kernels = [k if k == "running" else absolute(k) for k in args.kernels]
    if args.results:
        args.results = absolute(args.results)
    if args.compare:
        args.compare = [absolute(c) for c in args.compare]
    for opt in ("kcidb", "kernel_tree", "from_results"):
        if getattr(args, opt):
            setattr(args, opt, absolute(getattr(args, opt)))


def kcidb_failed(args: argparse.Namespace, folder: Path) -> bool:
    """Write --kcidb FILE from a finished run's folder; say why on stderr when it could not."""
    from lib.runner import kcidb

    problem = kcidb.write_for(args, folder)
    if problem:
        sys.stderr.write(f"run_suite.py: error: --kcidb: {problem}\n")
    return bool(problem)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    parser.bisect = "--bisect" in (sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.jobs is not None and not args.kernels:
        parser.error("-j/--jobs needs --kernels")
    resolve_paths(args, os.getcwd())
    _ensure_interpreter()
    sys.path.insert(0, str(ROOT))
    if args.kcidb or args.from_results or args.kernel_tree or args.origin != "kmm":
        from lib.runner import kcidb

        problem = kcidb.check_args(args) or (args.from_results and kcidb.write_for(args, args.from_results))
        if problem or args.from_results:
            if problem:
                sys.stderr.write(f"run_suite.py: error: {problem}\n")
            return exitcodes.usage_code(args.bisect) if problem else 0
    if args.compare or args.kernel or args.kernels:
        try:
            from lib.runner import parallel, vmrun
        except ImportError:
            sys.stderr.write("run_suite.py: error: --kernel/--kernels/--compare are not available in this build\n")
            return exitcodes.usage_code(args.bisect)
        try:
            code = vmrun.main(args, ROOT) if args.jobs is None else parallel.main(args, ROOT)  # -j: N at once
        finally:  # also for an interrupted run: its folder says what ran
            if args.kcidb and args.results and Path(args.results).exists():
                kcidb_failed(args, Path(args.results))
        return code
    chosen, patterns = split_selection(args.select)
    if args.list:
        return list_cases(pytest_args(args, chosen, patterns, None, None))
    from lib.runner import results as folders

    try:  # lib.runner.results decides the folder (and `latest`, below)
        folder = folders.open_run(args.results, ROOT, os.uname().release)
    except folders.ResultsError as e:
        sys.stderr.write(f"run_suite.py: error: {e}\n")
        return exitcodes.usage_code(args.bisect)
    results = folder.path
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        stdout_gone()
    tap_fd = os.dup(sys.stdout.fileno())
    status_fd = os.dup(sys.stderr.fileno())
    from lib.runner import interrupt

    interrupt.install()
    command = shlex.join(["run_suite.py", *(sys.argv[1:] if argv is None else argv)])
    extra = [f"--kmm-status-fd={status_fd}", f"--kmm-command={command}"]
    code, usage, run = run_pytest([*pytest_args(args, chosen, patterns, results, tap_fd), *extra], results / "run.log")
    os.close(tap_fd)
    os.close(status_fd)
    if usage:
        sys.stderr.write(f"run_suite.py: error: {usage}\n")
        folder.discard()  # nothing ran: a folder this run made goes
        return exitcodes.usage_code(args.bisect)
    summary = getattr(run, "final_summary", None)
    started = not (summary is None and getattr(run, "tap", None) is None and code == 2)  # pytest.ExitCode.INTERRUPTED
    write_failed = started and run is not None and bool(run.write_failure())
    if not started:
        sys.stderr.write("run_suite.py: interrupted before the run started (no case ran, no report)\n")
        folder.discard()
    else:
        folder.finish(reported=summary is not None and not write_failed)  # `latest` (lib.runner.results)
        say(f"# results: {results}")
    kcidb_bad = bool(args.kcidb and summary is not None and kcidb_failed(args, results))  # bisect: not the kernel's
    decision = exitcodes.host_run(summary, bisect=args.bisect, pytest_code=code, started=started,
                                  write_failed=write_failed, kcidb_failed=kcidb_bad)
    if args.bisect and started:
        print(f"# bisect: {decision.line()}", flush=True)
    elif summary is None and started:
        sys.stderr.write(f"run_suite.py: error: the run produced no report (pytest exit {code}); "
                         f"see {results}/run.log\n")
    return decision.code


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:  # stdout closed early: no traceback
        stdout_gone()
        sys.exit(1)
