"""KCIDB submissions (KernelCI's common results database) from summary.json.

The schema is the one the ``kcidb-io`` package validates as ``kcidb_io.schema.LATEST`` (v5.3
with kcidb-io 141): a submission holds ``version`` and lists of ``checkouts`` (the kernel's
source), ``builds`` (the kernel image built from it) and ``tests`` (one per case).  Every id is
``<origin>:<rest>``, where origin matches the schema's origin pattern (``[a-z0-9_]+``); a test
path is dot-separated components of ``[a-zA-Z0-9_-]``.

:func:`submission` is a pure function of a summary (lib.runner.report.summary) and optional kernel
facts (:class:`KernelFacts`: a git tree, a kernel config); the fact gatherers that read the
machine (:func:`tree_facts`, :func:`config_facts`, :func:`host_facts`) are separate.

Mapping (KCIDB's status definitions are in the schema's ``status`` description):

==========  ========  ==========================================================================
verdict     status    why
==========  ========  ==========================================================================
pass        PASS      the case completed and found the kernel correct
fail        FAIL      the case completed and found the kernel faulty; a TIMEOUT is FAIL too
                      (kselftest counts it as a failure), comment ``TIMEOUT: <reason>``
xpass       FAIL      kselftest fails the run on an XPASS (a documented limitation is gone, so
                      the expectation is wrong); comment ``XPASS: <reason>``
error       ERROR     the case did not complete because of its own code or a ``cannot test``
                      condition: the kernel's status is unknown
xfail       PASS      kselftest reports it ``ok``: the kernel behaves as upstream documents it
                      (a documented limitation).  SKIP would claim the case did not run, DONE
                      that it judged nothing.  Told apart by ``misc.verdict == "xfail"`` and
                      the comment ``XFAIL: <reason>``
skip        SKIP      not applicable here (a missing feature, privilege, pool)
not run     MISS      a planned case the run never reached (interrupted, the guest died or hit
                      its deadline): the harness did not run it
==========  ========  ==========================================================================

Test paths: ``kmm.<area>.<case>``, each of area and case sanitised by :func:`path_component`
(every run of characters outside ``[A-Za-z0-9_-]`` becomes one ``_``, leading/trailing ``_``
dropped); a case whose sanitised path collides with an earlier one gets ``-2``, ``-3``, ... in
the order of summary.json.  The upstream case name is kept in ``misc.case_name`` and starts the
comment.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import kcidb_io

from lib.kernel import system
from lib.runner.verdict import Verdict

SCHEMA = kcidb_io.schema.LATEST
ORIGIN_RE = re.compile(f"^{SCHEMA.origin_pattern}$")
DEFAULT_ORIGIN = "kmm"
LOG_EXCERPT_MAX = 16384  # the schema's maxLength for log_excerpt
STATUS = {Verdict.PASS: "PASS", Verdict.FAIL: "FAIL", Verdict.XPASS: "FAIL", Verdict.ERROR: "ERROR",
          Verdict.XFAIL: "PASS", Verdict.SKIP: "SKIP"}
TAG = {Verdict.XFAIL: "XFAIL", Verdict.XPASS: "XPASS", Verdict.SKIP: "SKIP", Verdict.ERROR: "ERROR",
       Verdict.FAIL: "FAIL"}
NOT_RUN_STATUS = "MISS"
SUITE_PATH = "kmm"
#: The config options the suite's fragment (scripts/kernel.config) sets: their values in a
#: kernel's config are the "config fragment" a build records.
FRAGMENT = Path(__file__).resolve().parents[2] / "scripts" / "kernel.config"


class KcidbError(ValueError):
    """Bad input for a submission (an origin the schema refuses)."""


@dataclass
class KernelFacts:
    """What summary.json does not hold about the kernel under test (all optional)."""

    git_commit_hash: str = ""
    git_commit_name: str = ""  # git describe
    git_repository_url: str = ""
    git_repository_branch: str = ""
    tree_name: str = ""
    config_name: str = ""  # where the config came from (a file path)
    config_fragment: dict[str, str] = field(default_factory=dict)  # the fragment's options: value
    host: dict[str, str] = field(default_factory=dict)  # cpus, memory of the machine that ran it


def check_origin(origin: str) -> str:
    if not ORIGIN_RE.match(origin):
        raise KcidbError(f"--origin {origin!r} is not a KCIDB origin (lowercase letters, digits, _)")
    return origin


def path_component(text: str) -> str:
    """A KCIDB path component from any text: runs outside [A-Za-z0-9_-] become one '_'."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "_"


def _clean(text: str) -> str:
    """No NUL in any KCIDB string (every text field's pattern is ``^[^\\0]*$``)."""
    return text.replace("\0", "\ufffd")


def _excerpt(parts: list[str]) -> str:
    text = _clean("\n".join(p for p in parts if p))
    if len(text) <= LOG_EXCERPT_MAX:
        return text
    cut = "\n[... cut ...]\n"
    half = (LOG_EXCERPT_MAX - len(cut)) // 2
    return text[:half] + cut + text[-half:]


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _comment(name: str, verdict: Verdict, message: str, timeout: bool) -> str:
    tag = TAG.get(verdict, "")
    if verdict is Verdict.FAIL and timeout:
        tag = "TIMEOUT"
    msg = " ".join(message.split())
    return _clean(f"{name}: {tag}: {msg}" if tag and msg else f"{name}: {tag}" if tag else name)


def submission(summary: dict, origin: str = DEFAULT_ORIGIN, facts: KernelFacts | None = None) -> dict:
    """The KCIDB submission of one run (a summary.json dict)."""
    check_origin(origin)
    facts = facts or KernelFacts()
    kernel = summary.get("kernel", {})
    run = summary.get("run", {})
    vm = summary.get("vm") or {}
    release = kernel.get("kernel.release", "unknown")
    version = kernel.get("kernel.version", "")
    image = kernel.get("vm.image") or vm.get("image") or ""
    host = run.get("hostname", "")
    started = summary.get("started", "")

    if facts.git_commit_hash:
        checkout_id = f"{origin}:git:{facts.git_commit_hash}"
    else:
        checkout_id = f"{origin}:release:{release}:{_digest(release, version)}"
    checkout: dict = {"id": checkout_id, "origin": origin, "comment": _clean(f"Linux {release} {version}".strip()),
                      "valid": True, "misc": {"kernel_release": release, "kernel_version": version}}
    for key in ("git_commit_hash", "git_commit_name", "git_repository_branch", "tree_name"):
        if getattr(facts, key):
            checkout[key] = _clean(getattr(facts, key))
    if facts.git_repository_url:
        if SCHEMA.git_repository_url_re.fullmatch(facts.git_repository_url):
            checkout["git_repository_url"] = facts.git_repository_url
        else:  # the schema takes https:// URLs only; the rest is kept as a fact
            checkout["misc"]["git_remote"] = _clean(facts.git_repository_url)

    build_id = f"{origin}:build:{release}:{_digest(release, version, image, facts.config_name, checkout_id)}"
    build: dict = {"id": build_id, "checkout_id": checkout_id, "origin": origin,
                   "comment": _clean(f"{release} {version}".strip()),
                   "misc": {"kernel_release": release, "kernel_version": version,
                            "kernel_facts": {k: _clean(str(v)) for k, v in kernel.items()}}}
    arch = kernel.get("machine", "")
    if re.fullmatch(r"[a-z0-9_]+", arch):
        build["architecture"] = arch
    if image:
        build["misc"]["image"] = _clean(image)
    if facts.config_name:
        build["config_name"] = _clean(facts.config_name)
    if facts.config_fragment:
        build["misc"]["config_fragment"] = dict(facts.config_fragment)
    if release != "unknown":  # the kernel ran, so the image it came from was built
        build["status"] = "PASS"

    env_misc = {k: _clean(str(v)) for k, v in run.items()}
    env_misc.update({f"host.{k}": v for k, v in facts.host.items()})
    if vm:
        env_misc.update({f"vm.{k}": _clean(str(v)) for k, v in vm.items() if k != "console_tail" and v is not None})
    described = ", ".join(x for x in (f"host {host}" if host else "",
                                      f"guest of {image}" if image and image != "running" else "",
                                      facts.host.get("cpus", "") and f"{facts.host['cpus']} CPUs",
                                      facts.host.get("memory", ""),
                                      f"kmm-conformance {run.get('version', '?')} ({run.get('describe', '?')})") if x)
    environment = {"comment": _clean(described), "misc": env_misc}

    run_key = f"{started}/{host}/{release}/{_digest(started, host, release, version, image)}"
    tests = []
    used: set[str] = set()

    def test_path(area: str, name: str) -> str:
        base = f"{SUITE_PATH}.{path_component(area)}.{path_component(name)}"
        path, n = base, 1
        while path in used:
            n += 1
            path = f"{base}-{n}"
        used.add(path)
        return path

    for c in summary.get("cases", []):
        path = test_path(c["area"], c["name"])
        verdict = Verdict(c["verdict"])
        timeout = bool(c.get("timeout"))
        misc = {"case_name": _clean(c["name"]), "area": c["area"], "verdict": verdict, "timeout": timeout,
                "nodeid": c.get("nodeid", ""), "message": _clean(c.get("message", ""))}
        if c.get("repeats"):
            misc["repeats"] = list(c["repeats"])
        t: dict = {"id": f"{origin}:{run_key}:{path}", "build_id": build_id, "origin": origin, "path": path,
                   "status": STATUS[verdict], "comment": _comment(c["name"], verdict, c.get("message", ""), timeout),
                   "duration": max(0.0, float(c.get("duration", 0.0))), "environment": environment, "misc": misc}
        if c.get("started"):
            t["start_time"] = c["started"]
        log = _excerpt([c.get("message", ""), c.get("details", ""),
                        c.get("kmsg") and "kernel log during the case:\n" + c["kmsg"], c.get("traceback", "")])
        if log:
            t["log_excerpt"] = log
        tests.append(t)

    planned = {p["name"]: p for p in summary.get("planned", [])}
    reason = summary.get("partial_reason") or "the run ended early"
    for name in summary.get("not_run", []):
        area = planned.get(name, {}).get("area", "unknown")
        path = test_path(area, name)
        tests.append({"id": f"{origin}:{run_key}:{path}", "build_id": build_id, "origin": origin, "path": path,
                      "status": NOT_RUN_STATUS, "comment": _clean(f"{name}: not run: {reason}"),
                      "environment": environment,
                      "misc": {"case_name": _clean(name), "area": area, "verdict": "notrun",
                               "nodeid": planned.get(name, {}).get("nodeid", ""), "message": _clean(reason)}})
    return {"version": {"major": SCHEMA.major, "minor": SCHEMA.minor},
            "checkouts": [checkout], "builds": [build], "tests": tests}


def merge(submissions: list[dict]) -> dict:
    """One submission of several runs (a --kernels series): objects with the same id once."""
    out: dict = {"version": {"major": SCHEMA.major, "minor": SCHEMA.minor}, "checkouts": [], "builds": [], "tests": []}
    for s in submissions:
        for kind in ("checkouts", "builds", "tests"):
            seen = {o["id"] for o in out[kind]}
            out[kind] += [o for o in s.get(kind, []) if o["id"] not in seen]
    return out


def validate(data: dict) -> None:
    """Raise jsonschema's ValidationError unless kcidb-io's latest schema accepts ``data``."""
    SCHEMA.validate_exactly(data)


# ---------------------------------------------------------------------------------------
# facts from the machine (not pure)


def tree_facts(tree: str) -> KernelFacts:
    """Git facts of a kernel source tree (the commit the kernel was built from)."""

    def git(*args: str) -> str:
        return system.git_output(tree, *args)

    commit = git("rev-parse", "HEAD")
    if not re.fullmatch(SCHEMA.git_commit_hash_pattern, commit):
        raise KcidbError(f"--kernel-tree {tree}: not a git tree with a commit")
    branch = git("rev-parse", "--abbrev-ref", "HEAD")
    remote = git("config", "--get", f"branch.{branch}.remote") or "origin"
    return KernelFacts(git_commit_hash=commit, git_commit_name=git("describe", "--always", "--tags"),
                       git_repository_url=git("remote", "get-url", remote),
                       git_repository_branch="" if branch == "HEAD" else branch)


def fragment_options() -> list[str]:
    try:
        text = FRAGMENT.read_text()
    except OSError:
        return []
    return [m.group(1) for m in re.finditer(r"^(?:# )?(CONFIG_[A-Za-z0-9_]+)", text, re.M)]


parse_config = system.parse_config


def config_facts(summary: dict) -> tuple[str, dict[str, str]]:
    """(config file, the suite fragment's options in it) of the kernel a summary ran on, when a
    config for it can be found: ``config-<version>`` beside a ``vmlinuz-<version>`` image, or
    for the running kernel /proc/config.gz or /boot/config-<release>; ('', {}) otherwise."""
    import gzip

    kernel = summary.get("kernel", {})
    image = kernel.get("vm.image") or (summary.get("vm") or {}).get("image") or ""
    candidates: list[str] = []
    if image and image != "running":
        name = os.path.basename(image)
        if name.startswith("vmlinuz-"):
            candidates.append(os.path.join(os.path.dirname(image), "config-" + name.removeprefix("vmlinuz-")))
    elif kernel.get("kernel.release") == os.uname().release:
        candidates += ["/proc/config.gz", f"/boot/config-{os.uname().release}"]
    for path in candidates:
        try:
            if path.endswith(".gz"):
                with gzip.open(path, "rt") as f:
                    text = f.read()
            else:
                text = Path(path).read_text()
        except OSError:
            continue
        cfg = parse_config(text)
        return path, {k: cfg.get(k, "absent") for k in fragment_options()}
    return "", {}


def host_facts(summary: dict) -> dict[str, str]:
    """CPUs and memory of this machine, for a run that ran on it (not inside a guest)."""
    if (summary.get("kernel", {}).get("vm.image") or (summary.get("vm") or {}).get("image", "running")
            != "running"):
        return {}
    if summary.get("run", {}).get("hostname") != os.uname().nodename:
        return {}
    mem = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) // 1024} MiB"
    except (OSError, ValueError, IndexError):
        pass
    return {"cpus": str(os.cpu_count() or 0), "memory": mem}


def gather(summary: dict, tree: str | None = None, guest: dict[str, str] | None = None) -> KernelFacts:
    """The facts of a summary's kernel; ``guest`` (CPUs, memory given to the VM) for a guest run."""
    facts = tree_facts(tree) if tree else KernelFacts()
    facts.config_name, facts.config_fragment = config_facts(summary)
    facts.host = host_facts(summary)
    if not facts.host and guest and (summary.get("vm") or {}).get("image", "running") != "running":
        facts.host = dict(guest)
    return facts


def load_runs(folder: str | Path) -> list[dict]:
    """The summaries of a results folder: its own summary.json, or those of the run folders
    directly inside it (a ``--kernels`` series), in name order."""
    import json

    folder = Path(folder)
    own = folder / "summary.json" if folder.is_dir() else folder
    paths = [own] if own.is_file() else sorted(p for p in folder.glob("*/summary.json"))
    if not paths:
        raise KcidbError(f"no summary.json in {folder}")
    runs = []
    for p in paths:
        try:
            runs.append(json.loads(p.read_text()))
        except (OSError, ValueError) as e:
            raise KcidbError(f"cannot read {p}: {getattr(e, 'strerror', None) or e}") from None
    return runs


def convert(folder: str | Path, origin: str = DEFAULT_ORIGIN, tree: str | None = None,
            guest: dict[str, str] | None = None) -> dict:
    """A validated submission of every run in a results folder."""
    data = merge([submission(s, origin, gather(s, tree, guest)) for s in load_runs(folder)])
    validate(data)
    return data


def write(path: str | Path, data: dict) -> None:
    import json

    from lib.runner import report

    report.write_atomic(str(path), json.dumps(data, indent=1) + "\n")


# ---------------------------------------------------------------------------------------
# run_suite.py's side: --kcidb FILE [--origin O] [--kernel-tree DIR] [--from-results DIR]


def check_args(args) -> str:
    """Why these command-line options cannot work, or '' (checked before any run)."""
    kcidb = getattr(args, "kcidb", None)
    if not kcidb:
        if args.from_results or args.kernel_tree or args.origin != DEFAULT_ORIGIN:
            return "--origin, --kernel-tree and --from-results need --kcidb FILE"
        return ""
    try:
        check_origin(args.origin)
    except KcidbError as e:
        return str(e)
    if args.kernel_tree and not os.path.isdir(args.kernel_tree):
        return f"--kernel-tree {args.kernel_tree}: not a directory"
    if args.from_results and not os.path.exists(args.from_results):
        return f"--from-results {args.from_results}: no such folder"
    if not args.from_results and (args.kernel or args.kernels) and not args.results:
        return "--kcidb with --kernel/--kernels needs --results DIR (the folder it converts)"
    if args.compare or args.list:
        return "--kcidb does not go with --compare or --list"
    parent = os.path.dirname(os.path.abspath(kcidb))
    if not os.path.isdir(parent):
        return f"--kcidb {kcidb}: no such folder {parent}"
    return ""


def write_for(args, folder: str | Path) -> str:
    """Convert ``folder`` into ``args.kcidb``; '' or why it could not (one line)."""
    try:
        guest = None if args.from_results else {"cpus": str(args.cpus), "memory": args.memory}  # what --kernel gave
        data = convert(folder, args.origin, args.kernel_tree, guest)
        write(args.kcidb, data)
    except KcidbError as e:
        return str(e)
    except OSError as e:
        return f"cannot write {args.kcidb}: {e.strerror}"
    except jsonschema.exceptions.ValidationError as e:  # our bug: say where
        return f"the KCIDB submission is not valid ({'/'.join(map(str, e.absolute_path))}: {e.message[:200]})"
    n = len(data["tests"])
    print(f"# kcidb: {args.kcidb} (schema v{SCHEMA.major}.{SCHEMA.minor}, {len(data['builds'])} build(s), "
          f"{n} tests)", flush=True)
    return ""
