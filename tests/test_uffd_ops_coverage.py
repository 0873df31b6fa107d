"""The uffd_ops matrix and README's coverage table agree, and the table is well formed.

- README.md's "Coverage" section is exactly what scripts/coverage-table.py generates from
  cases/uffd_ops/matrix.py (the table is data: one place).
- The table has no duplicate outcome, no cell both covered and impossible, no unknown kind,
  and every row names a scenario that exists (and every scenario is used by a row).
Each check has a negative control.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def generator():
    spec = importlib.util.spec_from_file_location("coverage_table", ROOT / "scripts" / "coverage-table.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_coverage_table_is_the_generated_one() -> None:
    g = generator()
    assert g.differences((ROOT / "README.md").read_text(), g.render()) == []


def test_coverage_section_is_the_last_section() -> None:
    g = generator()
    section = g.readme_section((ROOT / "README.md").read_text())
    assert section is not None
    assert "\n## " not in section


def test_a_changed_cell_is_caught() -> None:
    g = generator()
    text = (ROOT / "README.md").read_text()
    stale = text.replace("| ✓ dflt |", "| ✓ all |", 1)
    assert stale != text
    assert g.differences(stale, g.render())


def test_a_row_added_to_the_table_is_caught() -> None:
    from cases.uffd_ops import matrix

    g = generator()
    extra = dataclasses.replace(matrix.ROWS[0], outcome="a new documented outcome")
    assert g.differences((ROOT / "README.md").read_text(), g.render((*matrix.ROWS, extra)))


def test_a_missing_section_is_caught() -> None:
    g = generator()
    assert g.differences("# README\n\n## Layout\n", g.render())


def test_the_table_is_well_formed() -> None:
    from cases.uffd_ops import matrix

    assert matrix.check_table() == []


def test_table_problems_are_caught() -> None:
    from cases.uffd_ops import matrix

    r = next(r for r in matrix.ROWS if r.kinds)
    bad = (*matrix.ROWS, r, dataclasses.replace(r, outcome="x", impossible=((r.kinds[0], "why"),)),
           dataclasses.replace(r, outcome="y", kinds=("no-such-kind",)),
           dataclasses.replace(r, outcome="z", expect="ok"))
    problems = matrix.check_table(bad)
    assert any("duplicate" in p for p in problems)
    assert any("both covered and impossible" in p for p in problems)
    assert any("unknown kind" in p for p in problems)
    assert any("expect 'ok'" in p for p in problems)


def test_every_row_has_its_scenario_and_every_scenario_a_row() -> None:
    from cases.uffd_ops import matrix
    from cases.uffd_ops.test_uffd_ops import SCENARIOS

    used = {r.scenario for r in matrix.ROWS}
    assert used - set(SCENARIOS) == set()
    assert set(SCENARIOS) - used == set()


def test_case_names_are_unique_and_readable() -> None:
    from cases.uffd_ops.test_uffd_ops import cells

    ids = [p.id for p in cells()]
    assert len(ids) == len(set(ids))
    assert "UFFDIO_COPY MODE_WP on shmem: maps the page write-protected; the next write raises a WP fault" in ids
