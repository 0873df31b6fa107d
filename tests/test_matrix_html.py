"""The HTML verdict matrix (lib/runner/matrix_html.py): its data, and the page as a real browser shows it.

The browser tests run headless Chromium (``chromium --headless``): ``--dump-dom`` gives the DOM
after the page's script ran (rows shown by default and with ``#all``, the verdict counts the
script computed per column, the message shown after a click), ``--screenshot`` a picture.  They
skip when no chromium is installed (CI does not install it: Debian's ``apt-get install
chromium`` does).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest

from lib.runner import matrix_html, report

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (apt-get install chromium)")


def run(verdicts: dict[str, tuple[str, str]], release: str, not_run: list[str] = (), vm: dict | None = None) -> dict:
    cases = [report.CaseResult("missing", n, v, m, timeout=m.startswith("timeout")) for n, (v, m) in verdicts.items()]
    planned = [report.Planned("missing", n) for n in [*verdicts, *not_run]]
    data = report.summary(cases, {"kernel.release": release, "kernel.version": f"#1 SMP {release}",
                                  "uffd.feature_names": "EVENT_FORK MISSING_SHMEM", "thp.sizes": "2048 kB",
                                  "hugetlb.sizes": "2048 kB"},
                          partial="interrupted (SIGINT)" if not_run else "", started=0.0, exit_code=1,
                          planned=planned)
    if vm:
        data["vm"] = vm
    return json.loads(json.dumps(data))


def columns() -> list[tuple[str, dict | None]]:
    a = run({"same pass": ("pass", ""), "same skip": ("skip", "no 1G page"), "regressed": ("pass", ""),
             "only in a": ("pass", ""), "xfail here": ("xfail", "documented"), "late": ("pass", "")},
            "6.1.0-57-amd64", vm={"image": "/boot/vmlinuz-6.1.0-57-amd64", "verdict": "ok", "stage": "EXITED",
                                   "reason": ""})
    b = run({"same pass": ("pass", ""), "same skip": ("skip", "no 1G page"), "regressed": ("fail", "byte 0 <changed>"),
             "xfail here": ("xpass", "gone"), "timed out": ("fail", "timeout after 5s: in wait")},
            "6.18.44", not_run=["late"])
    return [("6.1", a), ("6.18 (running)", b), ("7.0-rc1", None)]


def test_rows_show_what_differs():
    rows = {name: (row, d) for name, row, d in matrix_html.rows(columns())}
    assert [n for n, (_, d) in rows.items() if d] == ["regressed", "only in a", "xfail here", "late", "timed out"]
    assert rows["late"][0][1] == ("notrun", "not run: interrupted (SIGINT)")
    assert rows["only in a"][0][1] == ("none", "")
    assert rows["same pass"][0][2] == ("none", "")  # the column without a report
    assert not rows["same pass"][1]


def test_a_column_without_a_report_does_not_make_every_row_differ():
    cols = columns()
    only = [cols[0], cols[2]]
    assert not any(d for _, _, d in matrix_html.rows(only))
    assert matrix_html.facts(None) == [("run", "no report")]


def test_the_page_is_self_contained_and_escaped():
    text = matrix_html.page(columns())
    assert "byte 0 &lt;changed&gt;" in text and "byte 0 <changed>" not in text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text), "no network"
    assert "<script src" not in text and "<link" not in text
    assert "boot/vm: ok (EXITED)" in text and "boot/vm: host run" in text
    assert re.search(r'data-case="timed out" [^>]*title="TIMEOUT: timeout after 5s: in wait">TIMEOUT<', text)
    assert re.search(r'data-case="regressed" [^>]*>FAIL<', text)


# -- a real browser ------------------------------------------------------------------------------

def chromium(*args: str) -> subprocess.CompletedProcess:
    """Headless chromium with a profile of its own, removed afterwards (--no-sandbox: we are root)."""
    profile = tempfile.mkdtemp(prefix="kmm-chromium-")
    try:
        return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                               f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def dom(url: str) -> str:
    p = chromium("--dump-dom", url)
    assert p.returncode == 0 and "<tbody>" in p.stdout, p.stderr[-500:]
    return p.stdout


def shown_rows(text: str) -> tuple[int, int]:
    rows = re.findall(r"<tr data-differ=\"[01]\"([^>]*)>", text)
    return sum("hidden" not in r for r in rows), len(rows)


def counts(text: str) -> list[dict[str, int]]:
    cells = re.findall(r'<td class="count">([^<]*)</td>', text)
    return [dict((k, int(v)) for k, v in (kv.split(":") for kv in c.split())) for c in cells]


def expected_counts(cols) -> list[dict[str, int]]:
    rows = matrix_html.rows(cols)
    return [dict(Counter(row[i][0] for _, row, _ in rows)) for i in range(len(cols))]


@needs_chromium
def test_in_a_browser_the_counts_match_the_data(tmp_path):
    cols = columns()
    page = matrix_html.write(tmp_path / "matrix.html", cols)
    default = dom(page.as_uri())
    assert shown_rows(default) == (5, 7), "only the differing rows by default"
    assert re.search(r'id="shown">5<', default) and re.search(r'id="total">7<', default)
    everything = dom(page.as_uri() + "#all")
    assert shown_rows(everything) == (7, 7), "the switch (#all) shows every row"
    assert 'id="shown">7<' in everything
    assert counts(default) == expected_counts(cols)
    assert counts(default)[1] == {"pass": 1, "skip": 1, "fail": 2, "xpass": 1, "none": 1, "notrun": 1}
    assert counts(default)[2] == {"none": 7}


@needs_chromium
def test_in_a_browser_a_click_shows_the_message(tmp_path):
    text = matrix_html.page(columns())
    driver = ("<script>document.querySelector('td.v.fail[data-case=\"regressed\"]').click();</script></body>")
    (tmp_path / "clicked.html").write_text(text.replace("</body>", driver))
    out = dom((tmp_path / "clicked.html").as_uri())
    detail = re.search(r'<div id="detail">([^<]*)</div>', out)
    assert detail and detail.group(1) == "regressed [6.18 (running)]: fail\nbyte 0 &lt;changed&gt;"
    (tmp_path / "plain.html").write_text(text)  # the control: without the click the panel is empty
    assert '<div id="detail"></div>' in dom((tmp_path / "plain.html").as_uri())


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


@needs_chromium
def test_in_a_browser_a_real_series_renders(tmp_path):
    """A real --kernels series folder (tests/data/kcidb/series) beside a real host run."""
    real = [(p.parent.name, json.loads(p.read_text())) for p in sorted((DATA / "kcidb").glob("**/summary.json"))]
    page = matrix_html.write(tmp_path / "matrix.html", real)
    shot = Path(os.environ.get("KMM_MATRIX_SCREENSHOT", tmp_path / "matrix.png"))
    p = chromium(f"--screenshot={shot}", "--window-size=1400,1000", page.as_uri())
    assert p.returncode == 0 and shot.exists(), p.stderr[-500:]
    assert png_size(shot) == (1400, 1000)
    out = dom(page.as_uri() + "#all")
    assert shown_rows(out)[0] == len(matrix_html.rows(real))
    assert counts(out) == expected_counts(real)


def test_compare_writes_the_page_where_it_says(tmp_path):
    """--compare A B: the page goes beside B (or into --results DIR) and the line names it."""
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, (_label, data) in zip((a, b), columns()):
        folder.mkdir()
        (folder / "summary.json").write_text(json.dumps(data))
    argv = [sys.executable, str(ROOT / "run_suite.py"), "--compare", str(a), str(b)]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.returncode == 1, p.stderr  # "regressed" went pass -> fail
    target = b / "matrix-vs-a.html"
    assert f"# matrix: {target}" in p.stdout.splitlines()
    assert 'data-case="regressed"' in target.read_text()
    p = subprocess.run([*argv, f"--results={tmp_path / 'out'}"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert f"# matrix: {tmp_path / 'out' / 'matrix.html'}" in p.stdout.splitlines()
    # a place that cannot be written: said on the line, and the comparison still stands
    p = subprocess.run([*argv, "--results=/proc/kmm-no"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.returncode == 1 and "Traceback" not in p.stderr and "REGRESSED" in p.stdout
    assert any(line.startswith("# matrix: not written (/proc/kmm-no/matrix.html: ") for line in p.stdout.splitlines())
