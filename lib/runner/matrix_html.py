"""The verdict matrix as one self-contained HTML page: cases down, kernels (or runs) across.

Written by a ``--kernels`` run (``matrix.html`` in its series folder) and by ``--compare``.
Everything is inline (CSS, a few lines of JS, the data): it opens from the results folder with
no server and no network.  Cells are coloured by verdict; by default only the rows whose
verdicts differ between columns are shown, and a switch (or the URL fragment ``#all``) shows
them all; a cell's message is its tooltip (``title``) and is shown in a panel when clicked.
Each column's head lists the kernel facts: release, ``uname -v``, uffd features, THP and hugetlb
sizes and the boot/VM verdict.  The script fills in the counts it sees (rows shown, verdicts per
column) so a browser test can check what a reader sees against the data.

Pure: :func:`page` turns (label, summary.json dict or None) pairs into the page's text.
"""

from __future__ import annotations

import html
from pathlib import Path

from lib.runner.verdict import Verdict

NOT_RUN = "notrun"
MISSING = "none"  # no result for this case in this column
ORDER = (Verdict.PASS, Verdict.FAIL, Verdict.ERROR, Verdict.XPASS, Verdict.XFAIL, Verdict.SKIP, NOT_RUN, MISSING)
SHORT = {Verdict.PASS: "ok", Verdict.FAIL: "FAIL", Verdict.ERROR: "ERROR", Verdict.XPASS: "XPASS",
         Verdict.XFAIL: "xfail", Verdict.SKIP: "skip", NOT_RUN: "not run", MISSING: "-"}

CSS = """
body{font:13px/1.35 system-ui,sans-serif;margin:1em;color:#222}
table{border-collapse:collapse}
th,td{border:1px solid #bbb;padding:2px 6px;vertical-align:top}
th.case,td.case{text-align:left;max-width:40em}
thead th{background:#f3f3f3;font-weight:normal;text-align:left}
thead th b{font-size:14px}
.facts{font-size:11px;color:#444;white-space:pre-line;max-width:22em}
td.v{text-align:center;cursor:pointer;white-space:nowrap}
.pass{background:#b7e4b0}.fail{background:#f28b82;font-weight:bold}.error{background:#fbbc04}
.xpass{background:#d7aefb;font-weight:bold}.xfail{background:#ccebd9}.skip{background:#e0e0e0;color:#555}
.notrun{background:repeating-linear-gradient(45deg,#fff,#fff 4px,#eee 4px,#eee 8px)}.none{color:#999}
tr[hidden]{display:none}
#detail{white-space:pre-wrap;border:1px solid #888;padding:.5em;margin:.5em 0;background:#fafafa;min-height:1.5em}
tfoot td{font-size:11px;background:#f3f3f3}
"""

JS = """
(function(){
  var rows=[].slice.call(document.querySelectorAll('tbody tr'));
  var box=document.getElementById('showall');
  function apply(){
    var all=box.checked, shown=0;
    rows.forEach(function(r){var h=!all&&r.dataset.differ!=='1'; r.hidden=h; if(!h)shown++;});
    document.getElementById('shown').textContent=shown;
    if(all!==(location.hash==='#all')) history.replaceState(null,'',all?'#all':'#');
  }
  box.checked=location.hash==='#all';
  box.addEventListener('change',apply);
  apply();
  document.getElementById('total').textContent=rows.length;
  var ncol=document.querySelectorAll('thead th.col').length;
  for(var i=0;i<ncol;i++){
    var n={};
    rows.forEach(function(r){var v=r.querySelectorAll('td.v')[i].dataset.v; n[v]=(n[v]||0)+1;});
    var cell=document.querySelectorAll('tfoot td.count')[i];
    cell.textContent=Object.keys(n).sort().map(function(k){return k+':'+n[k];}).join(' ');
  }
  document.querySelector('tbody').addEventListener('click',function(e){
    var td=e.target.closest('td.v'); if(!td)return;
    document.getElementById('detail').textContent=td.dataset.case+' ['+td.dataset.col+']: '+
      (td.dataset.v)+(td.title?'\\n'+td.title:'');
  });
})();
"""


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def label_of(verdict: str, message: str) -> str:
    """A cell's text: the short verdict, TIMEOUT for a failure that was a timeout."""
    return "TIMEOUT" if verdict == Verdict.FAIL and message.startswith("TIMEOUT: ") else SHORT.get(verdict, verdict)


def cells(summary: dict | None) -> dict[str, tuple[str, str]]:
    """case name -> (verdict, message) of one column; planned cases never reached are 'notrun'."""
    if not summary:
        return {}
    out = {}
    for c in summary.get("cases", []):
        msg = c.get("message", "")
        if c.get("timeout"):
            msg = "TIMEOUT: " + msg
        if c.get("details"):
            msg += "\n" + c["details"][:2000]
        out[c["name"]] = (str(Verdict(c["verdict"])), msg.strip())
    reason = summary.get("partial_reason") or "the run ended early"
    for name in summary.get("not_run", []):
        out.setdefault(name, (NOT_RUN, f"not run: {reason}"))
    return out


def facts(summary: dict | None) -> list[tuple[str, str]]:
    """The kernel facts shown in a column's head."""
    if not summary:
        return [("run", "no report")]
    k = summary.get("kernel", {})
    vm = summary.get("vm") or {}
    if vm and vm.get("image", "running") != "running":
        boot = f"{vm.get('verdict', '?')} ({vm.get('stage', '?')})" + (f": {vm['reason']}" if vm.get("reason") else "")
    elif vm:
        boot = "host (no VM)"
    else:
        boot = "host run"
    t = summary.get("totals", {})
    return [
        ("release", k.get("kernel.release", "?")),
        ("uname -v", k.get("kernel.version", "?")),
        ("uffd features", k.get("uffd.feature_names") or k.get("uffd.features", "?")),
        ("THP sizes", k.get("thp.sizes", "?")),
        ("hugetlb sizes", k.get("hugetlb.sizes", "?")),
        ("boot/vm", boot),
        ("run", ("partial: " + summary.get("partial_reason", "")) if summary.get("partial") else "complete"),
        ("totals", " ".join(f"{v}:{t.get(v, 0)}" for v in ORDER[:6]) + f" not run:{len(summary.get('not_run', []))}"),
    ]


def rows(columns: list[tuple[str, dict | None]]) -> list[tuple[str, list[tuple[str, str]], bool]]:
    """(case, [(verdict, message) per column], differs) in order of first appearance.  A row
    differs when the columns that have a report give it different verdicts (a case missing from
    one of them counts as a verdict of its own)."""
    per = [cells(s) for _, s in columns]
    names: list[str] = []
    seen: set[str] = set()
    for col in per:
        for n in col:
            if n not in seen:
                seen.add(n)
                names.append(n)
    out = []
    for n in names:
        row = [col.get(n, (MISSING, "")) for col in per]
        judged = {v for (v, _), (_, s) in zip(row, columns) if s}  # a column without a report differs in nothing
        out.append((n, row, len(judged) > 1))
    return out


def page(columns: list[tuple[str, dict | None]], title: str = "kmm-conformance verdict matrix") -> str:
    body = rows(columns)
    differ = sum(1 for _, _, d in body if d)
    head = ['<th class="case">case</th>']
    for label, s in columns:
        fs = "\n".join(f"{k}: {v}" for k, v in facts(s))
        head.append(f'<th class="col"><b>{_esc(label)}</b><div class="facts">{_esc(fs)}</div></th>')
    trs = []
    for name, row, d in body:
        tds = [f'<td class="case">{_esc(name)}</td>']
        for (label, _), (v, msg) in zip(columns, row):
            tds.append(f'<td class="v {v}" data-v="{v}" data-case="{_esc(name)}" data-col="{_esc(label)}" '
                       f'title="{_esc(msg)}">{_esc(label_of(v, msg))}</td>')
        trs.append(f'<tr data-differ="{int(d)}">{"".join(tds)}</tr>')
    foot = '<tr><td class="case">verdict counts (all rows)</td>' + "".join(
        '<td class="count"></td>' for _ in columns) + "</tr>"
    legend = " ".join(f'<span class="{v}">&nbsp;{_esc(SHORT[v])}&nbsp;</span>' for v in ORDER)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title><style>{CSS}</style></head>
<body>
<h1>{_esc(title)}</h1>
<p>{len(body)} cases, {differ} with verdicts that differ between columns. Legend: {legend}</p>
<p><label><input type="checkbox" id="showall"> show all cases</label>
 &mdash; showing <span id="shown">{differ}</span> of <span id="total">{len(body)}</span> rows.
 Hover over a verdict for its message; click it to show the message below.</p>
<div id="detail"></div>
<table>
<thead><tr>{"".join(head)}</tr></thead>
<tbody>
{chr(10).join(trs)}
</tbody>
<tfoot>{foot}</tfoot>
</table>
<script>{JS}</script>
</body></html>
"""


def write(path: str | Path, columns: list[tuple[str, dict | None]], title: str = "") -> Path:
    """Write the page (through a temporary file) and return its path."""
    from lib.runner import report

    report.write_atomic(str(path), page(columns, title or "kmm-conformance verdict matrix"))
    return Path(path)


def compare_page(runs: list[str], summaries: list[dict], out_dir: str | None = None) -> str:
    """--compare's page: into ``out_dir`` (--results) as matrix.html, else beside the second
    run as ``matrix-vs-<first run>.html``.  Returns the line to print (where it went, or why
    it could not be written)."""
    import os

    folders = [Path(r) if Path(r).is_dir() else Path(r).parent for r in runs]
    labels = [f.resolve().name or str(f) for f in folders]
    if out_dir:
        target = Path(out_dir) / "matrix.html"
    else:
        target = folders[1] / f"matrix-vs-{labels[0]}.html"
    try:
        os.makedirs(target.parent, exist_ok=True)
        write(target, list(zip(labels, summaries)), f"kmm-conformance: {labels[0]} -> {labels[1]}")
    except OSError as e:
        return f"# matrix: not written ({target}: {e.strerror})"
    return f"# matrix: {target}"
