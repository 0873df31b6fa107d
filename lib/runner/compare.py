"""Compare runs: what changed between two result folders, and verdict tables across kernels.

Pure functions over summary.json data (lib.runner.report.summary); the command-line side lives in
lib.runner.vmrun.  A regression is a case that passed (or xfailed, or skipped) in the first run and
fails (fail, error, xpass) in the second.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from lib.runner.verdict import BAD, Verdict


def load(run: str | Path) -> dict:
    """A run's summary.json, from the folder (or the file itself)."""
    p = Path(run)
    if p.is_dir():
        p = p / "summary.json"
    with open(p) as f:
        return json.load(f)


def verdicts(summary: dict) -> dict[str, Verdict]:
    return {c["name"]: Verdict(c["verdict"]) for c in summary["cases"]}


@dataclass
class Comparison:
    regressed: list[tuple[str, str, str]] = field(default_factory=list)
    fixed: list[tuple[str, str, str]] = field(default_factory=list)
    newly_skipped: list[tuple[str, str, str]] = field(default_factory=list)
    newly_run: list[tuple[str, str, str]] = field(default_factory=list)
    added: list[tuple[str, str]] = field(default_factory=list)
    removed: list[tuple[str, str]] = field(default_factory=list)
    unchanged: int = 0

    @property
    def exit_code(self) -> int:
        return 1 if self.regressed else 0


def compare(a: dict, b: dict) -> Comparison:
    va, vb = verdicts(a), verdicts(b)
    c = Comparison()
    for name, old in va.items():
        if name not in vb:
            c.removed.append((name, old))
            continue
        new = vb[name]
        if old == new:
            c.unchanged += 1
        elif new in BAD and old not in BAD:
            c.regressed.append((name, old, new))
        elif old in BAD and new not in BAD:
            c.fixed.append((name, old, new))
        elif new is Verdict.SKIP:
            c.newly_skipped.append((name, old, new))
        else:
            c.newly_run.append((name, old, new))
    for name, new in vb.items():
        if name not in va:
            c.added.append((name, new))
    return c


def format_comparison(c: Comparison, label_a: str, label_b: str) -> str:
    lines = [f"# comparing {label_a} -> {label_b}"]
    for title, rows in (("REGRESSED", c.regressed), ("FIXED", c.fixed), ("NEWLY SKIPPED", c.newly_skipped),
                        ("CHANGED", c.newly_run)):
        for name, old, new in rows:
            lines.append(f"{title:<14} {old:>5} -> {new:<5} {name}")
    for name, v in c.added:
        lines.append(f"{'ADDED':<14} {'':>5}    {v:<5} {name}")
    for name, v in c.removed:
        lines.append(f"{'REMOVED':<14} {v:>5}          {name}")
    lines.append(
        f"# regressed {len(c.regressed)}, fixed {len(c.fixed)}, newly skipped {len(c.newly_skipped)}, "
        f"changed {len(c.newly_run)}, added {len(c.added)}, removed {len(c.removed)}, unchanged {c.unchanged}"
    )
    return "\n".join(lines)


SHORT = {Verdict.PASS: "ok", Verdict.FAIL: "FAIL", Verdict.ERROR: "ERR", Verdict.XFAIL: "xfail",
         Verdict.XPASS: "XPASS", Verdict.SKIP: "skip"}


def verdict_table(runs: list[tuple[str, dict | None]]) -> str:
    """Cases down, kernels across; a kernel whose run produced no report shows its reason."""
    names: list[str] = []
    for _, s in runs:
        for n in verdicts(s) if s else {}:
            if n not in names:
                names.append(n)
    cols = [label for label, _ in runs]
    width = max([len(n) for n in names] + [4])
    colw = [max(len(c), 6) for c in cols]
    out = ["case".ljust(width) + "  " + "  ".join(c.ljust(w) for c, w in zip(cols, colw))]
    for n in names:
        cells = []
        for (_, s), w in zip(runs, colw):
            v = verdicts(s).get(n, "-") if s else "-"
            cells.append(SHORT.get(v, v).ljust(w))
        out.append(n.ljust(width) + "  " + "  ".join(cells))
    totals = []
    for (_, s), w in zip(runs, colw):
        if not s:
            totals.append("no run".ljust(w))
            continue
        t = s["totals"]
        totals.append(f"{t[Verdict.PASS]}/{t[Verdict.FAIL] + t[Verdict.ERROR]}/{t[Verdict.SKIP]}".ljust(w))
    out.append("pass/fail/skip".ljust(width) + "  " + "  ".join(totals))
    return "\n".join(out)


