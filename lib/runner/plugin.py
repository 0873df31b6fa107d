"""The runner plugin: how pytest runs the conformance cases under cases/ (registered by the root
conftest.py; the case fixtures are in lib.runner.fixtures).

* Isolation (docs/ARCHITECTURE.md rule 2): every case body runs in a forked child (lib.runner.isolation.run_isolated)
  with a deadline; fixtures run in the pytest process.  The isolation's verdict
  (lib.runner.verdict.Verdict) is the case's verdict: it is passed through to the reports, not
  read back from pytest's report (which only decides the verdicts of the set-up and tear-down
  phases, where no isolated call ran, and those of a case carrying pytest's ``xfail`` marker).
* Kernel log watch: a splat logged while a case ran fails it (lib.runner.kmsg).
* Names (rule 5): a case's TAP name is its ``@pytest.mark.tap("...")`` name, else its
  parametrisation id, else the function name; names are unique.
* Reports (rule 7): live TAP, then JUnit XML and summary.json in the results folder.  Nothing
  reaches the TAP stream before the machine-wide run lock is held.  summary.json and junit.xml
  are written at the start and every few seconds marked as running (``exit_code`` null), and
  finally with the verdicts; an interrupted run's reports name the planned cases it never ran.
  A results folder that stops taking writes ends the run (the TAP on stdout goes on).
  The results folder comes from lib.runner.results, the exit code from lib.runner.exitcodes.
* Repeats: ``--kmm-repeat N`` runs a case N times; verdicts that differ are flaky (:func:`repeat_verdict`).
* Interrupts: a signal whose KeyboardInterrupt was swallowed still ends the run at the next
  case boundary (lib.runner.interrupt).

The project's own tests (tests/) are ordinary pytest tests; none of this applies to them.
"""

from __future__ import annotations

import fnmatch
import os
import sys
import time
from pathlib import Path

import pytest

from lib import check
from lib.kernel import swap, system
from lib.runner import exitcodes, interrupt, isolation, kmsg, results
from lib.runner.report import CaseResult, Planned, TapWriter, iso, one_line, suite_version, summary, write_reports
from lib.runner.verdict import Verdict

ROOT = Path(__file__).resolve().parents[2]
# KMM_CASES points the runner at another case tree (the project's own tests use synthetic ones)
CASES = Path(os.environ.get("KMM_CASES", ROOT / "cases")).resolve()
DEFAULT_TIMEOUT = 60.0

INFO = pytest.StashKey[dict]()


def is_case(item: pytest.Item) -> bool:
    try:
        item.path.relative_to(CASES)
    except ValueError:
        return False
    return True


def area_of(item: pytest.Item) -> str:
    return item.path.relative_to(CASES).parts[0]


def case_name(item: pytest.Item) -> str:
    m = item.get_closest_marker("tap")
    if m:
        return str(m.args[0])
    cs = getattr(item, "callspec", None)
    if cs is not None:
        return cs.id
    return item.name.removeprefix("test_")


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("kmm", "kmm-conformance")
    g.addoption("--kmm-results", default=None, help="results folder for this run")
    g.addoption("--kmm-timeout", type=float, default=DEFAULT_TIMEOUT, help="per-case deadline (s)")
    g.addoption("--kmm-repeat", type=int, default=1, help="run each case N times; differing verdicts = flaky")
    g.addoption("--kmm-select", action="append", default=[], help="case-name pattern (substring or glob)")
    g.addoption("--kmm-tap-fd", type=int, default=None, help="also write live TAP to this fd")
    g.addoption("--kmm-no-swap-setup", action="store_true", help="never set up a temporary swap device")
    g.addoption("--kmm-status-fd", type=int, default=None, help="one-line status messages (the lock wait) to this fd")
    g.addoption("--kmm-command", default=None, help="the command line that started the run (for the reports)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "tap(name): the case's TAP name (upstream name where mirrored)")
    config.addinivalue_line("markers", "deadline(seconds): the case's isolation deadline")
    config.pluginmanager.register(KmmRun(config), "kmm-run")


class UsageError(pytest.UsageError):
    pass


class KmmRun:
    """The run: selection, isolation, live TAP and the reports."""

    REPORT_EVERY = 10.0  # seconds between the interim reports (about 0.2 s each for 1924 cases)

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.active = False
        self.results: list[CaseResult] = []
        self.partial = ""
        self.started = time.time()
        self.tap: TapWriter | None = None
        self.names: dict[str, str] = {}
        self.areas: dict[str, str] = {}
        self.pending: dict[str, CaseResult] = {}
        self.starts: dict[str, float] = {}
        self.props: dict[str, str] = {}
        self.run_facts: dict[str, str] = {}
        self.planned: list[Planned] = []
        self.watch: kmsg.KmsgWatch | None = None
        self.last_summary = 0.0
        self.outdir: Path | None = None
        self.collect_errors: list[CaseResult] = []
        self.session: pytest.Session | None = None
        self.write_errors: list[str] = []
        self.final_summary: dict | None = None  # the final summary.json data, None until the run ended

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        """A case module that does not import is a harness error, reported as an `error` result."""
        if report.failed and report.nodeid:
            path = Path(str(report.fspath)).resolve() if hasattr(report, "fspath") else None
            try:
                area = path.relative_to(CASES).parts[0] if path else "cases"
            except ValueError:
                return
            lines = [ln for ln in str(report.longrepr).splitlines() if ln.startswith("E ")]
            msg = lines[-1].removeprefix("E").strip() if lines else "collection failed"
            self.collect_errors.append(CaseResult(area, f"collect {report.nodeid}", "error",
                                                      f"harness error: {msg}", traceback=str(report.longrepr),
                                                      nodeid=report.nodeid))

    # -- collection -----------------------------------------------------------------------
    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        cases = [i for i in items if is_case(i)]
        if not cases:
            return
        self.active = True
        seen: dict[str, str] = {}
        for i in cases:
            n = case_name(i)
            if n in seen:
                self.active = False
                raise UsageError(f"duplicate case name {n!r}: {seen[n]} and {i.nodeid}")
            seen[n] = i.nodeid
            self.names[i.nodeid] = n
            self.areas[i.nodeid] = area_of(i)
        patterns = config.getoption("--kmm-select")
        if patterns:
            keep = []
            hit = dict.fromkeys(patterns, False)
            for i in items:
                n = self.names.get(i.nodeid, "")
                ok = False
                for p in patterns:
                    if (fnmatch.fnmatchcase(n, p) if any(c in p for c in "*?[") else p in n):
                        hit[p] = ok = True
                if ok:
                    keep.append(i)
            missing = [p for p, h in hit.items() if not h]
            if missing:
                self.active = False
                raise UsageError(f"no case matches {missing[0]!r}")
            deselected = [i for i in items if i not in keep]
            if deselected:
                config.hook.pytest_deselected(items=deselected)
            items[:] = keep

    def _status(self, line: str) -> None:
        """One line for the person running the suite (stderr), never on the TAP stream."""
        fd = self.config.getoption("--kmm-status-fd")
        try:
            if fd is not None:
                os.write(fd, (line + "\n").encode())
            elif sys.__stderr__ is not None:
                sys.__stderr__.write(line + "\n")
                sys.__stderr__.flush()
        except OSError:
            pass

    def _take_lock(self) -> None:
        """The machine-wide run lock, before anything reaches the TAP stream or the settings."""
        if not system.is_root() or system.SETTINGS.acquire():
            return
        wait = float(os.environ.get("KMM_LOCK_WAIT", "1800"))
        self._status(f"run_suite.py: waiting up to {wait:g}s for another run (pid {system.SETTINGS.lock_holder()}) "
                     f"to end (KMM_LOCK_WAIT)")
        if not system.SETTINGS.acquire(timeout=wait):
            self.active = False
            raise LockTimeout(f"another kmm-conformance run (pid {system.SETTINGS.lock_holder()}) "
                              f"still holds {system.SETTINGS.lock_path} after {wait:g}s (KMM_LOCK_WAIT)")

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        if self.collect_errors and not self.active and not self.config.getoption("--kmm-select"):
            self.active = True
        if not self.active or self.config.getoption("--collect-only"):
            return
        self.session = session
        self._take_lock()
        self.started = time.time()  # the run starts once it holds the lock
        repaired = {}
        if system.is_root():  # a killed run's swap device first, then its journalled knobs
            repaired = {**swap.repair(system.SETTINGS.state_dir), **system.SETTINGS.repair()}
        facts = system.facts()
        self.props = facts.properties()
        self.planned = [Planned(r.area, r.name, r.nodeid) for r in self.collect_errors] + [
            Planned(self.areas[i.nodeid], self.names[i.nodeid], i.nodeid)
            for i in session.items if i.nodeid in self.names]
        self.run_facts = self._run_facts()
        given = self.config.getoption("--kmm-results")
        try:
            self.outdir = results.run_dir(given, ROOT, facts.release)  # run_suite.py gives the folder it opened
            self.outdir.mkdir(parents=True, exist_ok=True)
            tap_file = open(self.outdir / "results.tap", "w")  # noqa: SIM115 - closed at session end
        except (OSError, results.ResultsError) as e:
            self.active = False
            system.SETTINGS.release()
            raise UsageError(f"results folder {self.outdir or given} is not writable: "
                             f"{getattr(e, 'strerror', None) or e}") from None
        streams: list = [tap_file]
        names = ["results.tap"]
        fd = self.config.getoption("--kmm-tap-fd")
        if fd is not None:
            streams.append(os.fdopen(os.dup(fd), "w"))
            names.append("")
        self.tap = TapWriter(streams, names)
        self.tap.header(len(self.planned))
        self.tap.diag(f"kernel {facts.release} {facts.version} ({facts.machine})")
        self.tap.diag(f"uffd features {facts.uffd_features:#x}; THP sizes: "
                      + (", ".join(system.size_label(s) for s in facts.thp_sizes) or "none")
                      + "; hugetlb sizes: " + (", ".join(system.size_label(s) for s in facts.hugetlb_sizes) or "none"))
        self.tap.diag(f"kmm-conformance {self.run_facts['version']} ({self.run_facts['describe']})")
        if repaired:
            self.tap.diag("restored settings left by a killed run: "
                          + ", ".join(f"{k}={v}" for k, v in repaired.items()))
        self.watch = kmsg.KmsgWatch()
        if self.watch.unavailable:
            self.tap.diag(f"kernel log watch off: {self.watch.unavailable}")
        isolation.become_subreaper()
        isolation.start_watchdog()
        self._write_reports(final=False)  # from here on a killed run leaves reports marked running
        for r in self.collect_errors:
            r.started = iso(time.time())
            self.results.append(r)
            self.tap.result(r)

    def _run_facts(self) -> dict[str, str]:
        """The suite's own facts, recorded once in every report: command line, options, version."""
        import shlex

        opt = self.config.getoption
        command = opt("--kmm-command") or shlex.join([os.path.basename(sys.argv[0]), *sys.argv[1:]])
        facts = {
            "command": command,
            "args": " ".join(str(a) for a in self.config.args),
            "option.timeout": f"{opt('--kmm-timeout'):g}",
            "option.repeat": str(opt("--kmm-repeat")),
            "option.select": " | ".join(opt("--kmm-select")),
            "option.keyword": opt("keyword") or "",
            "option.no_swap_setup": "yes" if opt("--kmm-no-swap-setup") else "no",
            "planned": str(len(self.planned)),
            "started": iso(self.started),
            "hostname": os.uname().nodename,
            "python": sys.version.split()[0],
            "pytest": pytest.__version__,
        }
        facts.update(suite_version(str(ROOT)))
        return facts

    # -- running --------------------------------------------------------------------------
    def pytest_runtest_logstart(self, nodeid: str, location: tuple) -> None:
        interrupt.check()  # a signal whose KeyboardInterrupt was swallowed still ends the run here
        self.starts[nodeid] = time.time()
        if self.tap and nodeid in self.names:
            self.tap.start(self.names[nodeid])

    @pytest.hookimpl(tryfirst=True)
    def pytest_pyfunc_call(self, pyfuncitem: pytest.Function) -> bool | None:
        if not is_case(pyfuncitem):
            return None
        fn = pyfuncitem.obj
        args = {a: pyfuncitem.funcargs[a] for a in pyfuncitem._fixtureinfo.argnames}
        m = pyfuncitem.get_closest_marker("deadline")
        timeout = float(m.args[0]) if m else self.config.getoption("--kmm-timeout")
        repeat = max(1, self.config.getoption("--kmm-repeat"))
        info: dict = {"details": "", "timeout": False, "kmsg": "", "repeats": [], "error": False, "traceback": "",
                      "xfail_marker": pyfuncitem.get_closest_marker("xfail") is not None}
        pyfuncitem.stash[INFO] = info
        outcomes = []
        for _ in range(repeat):
            if self.watch:
                self.watch.mark()
            o = isolation.run_isolated(
                lambda: fn(**args),
                timeout,
                skip_types=(pytest.skip.Exception,),
                xfail_types=(pytest.xfail.Exception,),
            )
            if self.watch:
                msgs, splats = self.watch.splats()
                if splats:
                    info["kmsg"] = "\n".join(msgs[-60:])
                    if not o.kind.failed:
                        o = isolation.Outcome(Verdict.FAIL, f"kernel log splat during the case: {splats[0]}", "",
                                              o.notes, o.duration)
            outcomes.append(o)
        kinds = [str(o.kind) for o in outcomes]
        final, flaky = repeat_verdict(outcomes)
        if repeat > 1:
            info["repeats"] = kinds
            if flaky:
                info["details"] = final.details
                message = f"flaky: verdicts differ between repeats ({', '.join(kinds)}): {final.message}"
                info["verdict"], info["message"] = Verdict.FAIL, one_line(message)
                pytest.fail(message, pytrace=False)
        info["details"] = final.details
        info["traceback"] = final.traceback
        info["verdict"], info["message"] = final.kind, reported_message(final)
        # pytest hears the same verdict (its own output, its exit status, its xfail marker)
        if final.kind is Verdict.PASS:
            return True
        if final.kind is Verdict.SKIP:
            pytest.skip(info["message"])
        if final.kind is Verdict.XFAIL:
            pytest.xfail(final.message)
        if final.kind is Verdict.TIMEOUT:
            info["timeout"] = True
        if final.kind is Verdict.ERROR:
            info["error"] = True
        pytest.fail(final.message or final.kind, pytrace=False)
        return True

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo):
        outcome = yield
        rep = outcome.get_result()
        if call.when == "call":
            rep.kmm_info = item.stash.get(INFO, None)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        rep = report
        if not self.active or rep.nodeid not in self.names:
            return
        r = self.pending.get(rep.nodeid)
        if r is None:
            r = CaseResult(area=self.areas[rep.nodeid],
                               name=self.names[rep.nodeid], verdict=Verdict.PASS, nodeid=rep.nodeid,
                               started=iso(self.starts.get(rep.nodeid, time.time())))
            self.pending[rep.nodeid] = r
        r.duration += rep.duration
        info = getattr(rep, "kmm_info", None) or {}
        if rep.when == "call" or (rep.when == "setup" and not rep.passed):
            self._verdict(r, rep, info)
        elif rep.when == "teardown" and rep.failed and not r.failed:
            r.verdict = Verdict.ERROR
            r.message = "teardown: " + _longrepr_line(rep)
            r.traceback = str(rep.longrepr)

    def _verdict(self, r: CaseResult, rep: pytest.TestReport, info: dict) -> None:
        r.details = info.get("details", "")
        r.traceback = info.get("traceback", "")
        r.kmsg = info.get("kmsg", "")
        r.repeats = info.get("repeats", [])
        r.timeout = info.get("timeout", False)
        verdict = info.get("verdict")
        if rep.when == "call" and verdict is not None and not info.get("xfail_marker"):
            r.verdict, r.message = verdict.reported, info["message"]  # the isolation's verdict
        else:
            _from_pytest(r, rep, info)

    def pytest_runtest_logfinish(self, nodeid: str, location: tuple) -> None:
        r = self.pending.pop(nodeid, None)
        if r is None or self.tap is None:
            return
        self.results.append(r)
        self.tap.result(r)
        if time.time() - self.last_summary > self.REPORT_EVERY:
            self._write_reports(final=False)
        self._check_writes()

    def write_failure(self) -> str:
        """The first write to the results folder that failed ('' when none did)."""
        errors = (self.tap.errors if self.tap else []) + self.write_errors
        return errors[0] if errors else ""

    def _check_writes(self) -> None:
        """A results folder that stopped taking writes ends the run at the next case boundary."""
        err = self.write_failure()
        if err and not self.partial:
            self.partial = f"stopped: the results folder {self.outdir} cannot be written ({err})"
        if err and self.session is not None and not self.session.shouldstop:
            self.session.shouldstop = self.partial

    def pytest_keyboard_interrupt(self, excinfo) -> None:
        if not self.partial:
            self.partial = str(getattr(excinfo.value, "kmm_reason", "")) or "interrupted (SIGINT)"

    # -- the end --------------------------------------------------------------------------
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if not self.active or self.tap is None:
            return
        if exitstatus == pytest.ExitCode.INTERRUPTED and not self.partial:
            self.partial = "interrupted"
        isolation.stop_watchdog()
        failed = system.SETTINGS.restore()
        if failed:
            self.tap.diag("could not restore: " + ", ".join(failed))
        system.SETTINGS.release()
        self._check_writes()
        self.tap.finish(self.partial)
        self._write_reports(final=True)
        self.tap.close()
        err = self.write_failure()
        if err:
            self._status(f"run_suite.py: error: results folder {self.outdir} could not be written ({err}): "
                         "its reports are incomplete and the run counts as failed")
        if self.watch:
            self.watch.close()

    def _write_reports(self, final: bool) -> None:
        """summary.json and junit.xml, each through a temporary file; both or neither are
        replaced, so a folder that fills up keeps the earlier reports, marked as running."""
        assert self.outdir is not None
        self.last_summary = time.time()
        props = dict(self.props)
        partial = self.partial or ("" if final else "running")
        if partial:
            props["run.partial"] = partial
        data = summary(self.results, props, partial=partial, started=self.started, exit_code=None,
                           planned=self.planned, run=self.run_facts)
        if final:
            data["exit_code"] = exitcodes.decide(data, bisect=False).code
            self.final_summary = data
        try:
            write_reports(str(self.outdir), data, sync=final)
        except OSError as e:
            name = os.path.basename(str(e.filename or "")).split(".tmp")[0] or "reports"
            self.write_errors.append(f"{name}: {e.strerror}")
            if final and self.tap is not None:
                self.tap.diag(f"results folder {self.outdir} could not be written ({self.write_errors[-1]}): "
                              "its reports are incomplete")


class LockTimeout(UsageError):
    """Another run kept the machine-wide run lock past KMM_LOCK_WAIT."""


def _cannot_test(o: isolation.Outcome) -> bool:
    return o.kind is Verdict.ERROR and o.message.startswith(check.CANNOT_TEST_PREFIX)


def repeat_verdict(outcomes: list[isolation.Outcome]) -> tuple[isolation.Outcome, bool]:
    """The outcome that speaks for a case run ``len(outcomes)`` times, and whether it is flaky.

    The first judged (not ``cannot test``) non-pass outcome speaks; verdicts that differ among
    the judged repeats are flaky.  Repeats that could not judge the kernel take no side: a case
    whose judged repeats all passed but one repeat could not test is ``cannot test``, never a
    flaky failure.
    """
    judged = [o for o in outcomes if not _cannot_test(o)]
    if not judged:
        return outcomes[0], False
    final = next((o for o in judged if o.kind is not Verdict.PASS), judged[-1])
    if final.kind is Verdict.PASS and len(judged) < len(outcomes):
        return next(o for o in outcomes if _cannot_test(o)), False
    return final, len({o.kind for o in judged}) > 1


def reported_message(o: isolation.Outcome) -> str:
    """The message a case result carries for an isolation outcome: a skip's or an expected
    failure's reason as given, a failure's on one line (TAP and JUnit show one line)."""
    if o.kind is Verdict.PASS:
        return ""
    if o.kind is Verdict.SKIP:
        return o.message or "skipped"
    if o.kind is Verdict.XFAIL:
        return o.message or "expected failure"
    return one_line(o.message or o.kind)


def _from_pytest(r: CaseResult, rep: pytest.TestReport, info: dict) -> None:
    """The verdict of a phase without an isolation verdict (set-up), or of a case carrying
    pytest's ``xfail`` marker (pytest applies the marker to the reported outcome)."""
    if hasattr(rep, "wasxfail"):
        r.verdict = Verdict.XFAIL if rep.skipped else Verdict.XPASS
        r.message = rep.wasxfail or _longrepr_line(rep)
    elif rep.skipped:
        r.verdict = Verdict.SKIP
        r.message = _skip_reason(rep)
    elif rep.failed:
        r.verdict = Verdict.ERROR if (rep.when == "setup" or info.get("error")) else Verdict.FAIL
        r.message = _longrepr_line(rep)
        if rep.when == "setup":
            r.message = "setup: " + r.message
            r.traceback = str(rep.longrepr)
    else:
        r.verdict = Verdict.PASS


def _longrepr_line(rep: pytest.TestReport) -> str:
    lr = rep.longrepr
    if lr is None:
        return ""
    if isinstance(lr, tuple):
        return str(lr[2])
    text = getattr(lr, "reprcrash", None)
    if text is not None and text.message:
        return one_line(text.message.removeprefix("Failed: "))
    return one_line(str(lr).strip().splitlines()[-1] if str(lr).strip() else "")


def _skip_reason(rep: pytest.TestReport) -> str:
    lr = rep.longrepr
    if isinstance(lr, tuple):
        return str(lr[2]).removeprefix("Skipped: ")
    return _longrepr_line(rep)
