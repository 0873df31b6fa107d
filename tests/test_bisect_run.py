"""scripts/bisect-run.sh on a stand-in kernel tree (a real build takes minutes).

The stand-in tree is a git repository with a Makefile whose defconfig/olddefconfig/bzImage
targets record their calls, a merge_config.sh that merges a fragment the way the kernel's
does (later values win), and KMM_RUN_SUITE points at a stand-in run_suite.py that records its
arguments and exits as told.  Checked: the tree's .config is kept and the fragment merged into
it (changed options printed; an unchanged merge leaves .config untouched), defconfig only
without a .config, O= builds, --repeat passed through, every exit code, and the step line.
scripts/bisect-proof.sh is the end-to-end proof on a real tree (README, bisection section).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "bisect-run.sh"
FRAGMENT = ROOT / "scripts" / "kernel.config"

MAKEFILE = """\
OUT := $(if $(O),$(O),.)
KCONFIG_CONFIG ?= $(OUT)/.config
defconfig:
\t@echo defconfig >> $(CALLS)
\t@printf 'CONFIG_DEFAULT_ONE=y\\n# CONFIG_USERFAULTFD is not set\\n' > $(OUT)/.config
olddefconfig:
\t@echo "olddefconfig $(KCONFIG_CONFIG)" >> $(CALLS)
\t@test -z "$(FAIL_OLDDEFCONFIG)"
bzImage:
\t@echo "bzImage $(OUT)" >> $(CALLS)
\t@if [ -n "$(FAIL_BUILD)" ]; then echo "mm/huge_memory.c:1: error: broken"; exit 2; fi
\t@mkdir -p $(OUT)/arch/x86/boot && cp $(OUT)/.config $(OUT)/arch/x86/boot/bzImage
"""

# Merge like scripts/kconfig/merge_config.sh -m -O DIR BASE FRAGMENT: a fragment's value of a
# symbol replaces the base's.
MERGE = """\
#!/bin/bash
while getopts mO: opt; do case $opt in O) out=$OPTARG ;; *) ;; esac; done
shift $((OPTIND - 1))
[ -n "$FAIL_MERGE" ] && { echo "merge broke"; exit 1; }
cp "$1" "$out/.config"
shift
for frag; do
	grep -E '^(CONFIG_|# CONFIG_)' "$frag" | while read -r line; do
		sym=$(sed -E 's/^# (CONFIG_[A-Za-z0-9_]+) is not set/\\1/; s/=.*//' <<<"$line")
		sed -i -E "/^$sym=/d; /^# $sym is not set/d" "$out/.config"
		echo "$line" >> "$out/.config"
	done
done
"""

# The stand-in run_suite.py: records argv, prints the verdict line it is told to, exits.
RUN_SUITE = """\
#!/bin/sh
printf '%s\\n' "$@" > "$ARGS_FILE"
[ -n "$VERDICT_LINE" ] && echo "$VERDICT_LINE"
[ -n "$ERROR_LINE" ] && echo "$ERROR_LINE" >&2
exit "${RC:-0}"
"""


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    t = tmp_path / "linux"
    for d in ("arch/x86", "mm", "scripts/kconfig"):
        (t / d).mkdir(parents=True)
    (t / "Makefile").write_text(MAKEFILE)
    (t / "scripts/kconfig/merge_config.sh").write_text(MERGE)
    (t / "mm/huge_memory.c").write_text("/* stand-in */\n")
    (t / ".gitignore").write_text(".*\n!.gitignore\narch/x86/boot/\nbuild/\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t.invalid"]
    subprocess.run(["git", "init", "-q", str(t)], check=True)
    subprocess.run([*git, "-C", str(t), "add", "-A"], check=True)
    subprocess.run([*git, "-C", str(t), "commit", "-q", "-m", "base"], check=True)
    fake = tmp_path / "run_suite.py"
    fake.write_text(RUN_SUITE)
    fake.chmod(0o755)
    return t


def bisect_run(tree: Path, *args: str, env: dict | None = None, **kw: str) -> subprocess.CompletedProcess:
    e = dict(os.environ, KMM_RUN_SUITE=str(tree.parent / "run_suite.py"), CALLS=str(tree.parent / "calls"),
             ARGS_FILE=str(tree.parent / "args"), KMM_MAKE_JOBS="1", VERDICT_LINE="# bisect: good (exit 0)")
    e.update(kw)
    e.pop("KBUILD_OUTPUT", None)
    e.update(env or {})
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=tree, env=e, capture_output=True, text=True,
                          timeout=60)


def calls(tree: Path) -> list[str]:
    path = tree.parent / "calls"
    return path.read_text().splitlines() if path.exists() else []


def run_suite_args(tree: Path) -> list[str]:
    return (tree.parent / "args").read_text().splitlines()


def short(tree: Path) -> str:
    return subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()


def step_line(p: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("bisect-run: ") and "(exit " in ln]
    assert len(lines) == 1, p.stdout + p.stderr
    return lines[0]


def test_the_trees_own_config_is_kept_and_the_fragment_merged(tree):
    (tree / ".config").write_text("CONFIG_MY_OWN_DRIVER=y\n# CONFIG_USERFAULTFD is not set\nCONFIG_GUP_TEST=y\n")
    p = bisect_run(tree, "vmsplice*")
    assert p.returncode == 0, p.stdout + p.stderr
    config = (tree / ".config").read_text()
    assert "CONFIG_MY_OWN_DRIVER=y" in config and "CONFIG_USERFAULTFD=y" in config
    assert "defconfig" not in calls(tree)
    said = next(ln for ln in p.stdout.splitlines() if ln.startswith("bisect-run: config:"))
    assert "kept the tree's .config" in said and "CONFIG_USERFAULTFD=y" in said
    assert "CONFIG_GUP_TEST" not in said  # unchanged options are not listed
    assert step_line(p) == f"bisect-run: {short(tree)} good (exit 0) " + step_line(p).split(") ", 1)[1]


def test_an_unchanged_merge_leaves_config_untouched(tree):
    """The second step's merge changes nothing: .config keeps its mtime (make rebuilds nothing
    for it), and no make clean or defconfig runs."""
    bisect_run(tree)
    cfg = tree / ".config"
    os.utime(cfg, (1_000_000_000, 1_000_000_000))
    p = bisect_run(tree)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "the fragment changed nothing" in p.stdout
    assert cfg.stat().st_mtime == 1_000_000_000
    assert calls(tree).count("defconfig") == 1 and not any("clean" in c for c in calls(tree))


def test_defconfig_only_without_a_config(tree):
    p = bisect_run(tree)
    assert p.returncode == 0, p.stdout + p.stderr
    assert calls(tree)[0] == "defconfig"
    config = (tree / ".config").read_text()
    assert "CONFIG_DEFAULT_ONE=y" in config and "CONFIG_USERFAULTFD=y" in config
    assert "no .config: started from defconfig" in p.stdout


@pytest.mark.parametrize("how", ["option", "KBUILD_OUTPUT"])
def test_out_of_tree_build(tree, how):
    out = tree.parent / "build"
    if how == "option":
        p = bisect_run(tree, "-O", str(out), "cow")
    else:
        p = bisect_run(tree, "cow", env={"KBUILD_OUTPUT": str(out)})
    assert p.returncode == 0, p.stdout + p.stderr
    assert (out / ".config").exists() and not (tree / ".config").exists()
    assert f"bzImage {out}" in calls(tree)
    assert run_suite_args(tree) == ["--bisect", "--kernel", str(out / "arch/x86/boot/bzImage"), "cow"]


def test_repeat_and_the_selection_pass_through(tree):
    bisect_run(tree, "--repeat", "5", "vmsplice*with THP (2048 kB)")
    assert run_suite_args(tree) == ["--bisect", "--kernel", str(tree / "arch/x86/boot/bzImage"), "--repeat", "5",
                                    "vmsplice*with THP (2048 kB)"]


@pytest.mark.parametrize("kw,code,verdict", [
    ({"RC": "0", "VERDICT_LINE": "# bisect: good (exit 0)"}, 0, "good (exit 0)"),
    ({"RC": "1", "VERDICT_LINE": "# bisect: bad (exit 1): failed: vmsplice one, vmsplice two"}, 1,
     "bad (exit 1): failed: vmsplice one, vmsplice two"),
    ({"RC": "125", "VERDICT_LINE": "# bisect: skip (exit 125): cannot test: the kernel did not boot"}, 125,
     "skip (exit 125): cannot test: the kernel did not boot"),
    ({"RC": "255", "VERDICT_LINE": "", "ERROR_LINE": "run_suite.py: error: kernel image not found: x"}, 255,
     "abort (exit 255): run_suite.py exited 255: kernel image not found: x"),
    ({"RC": "2", "VERDICT_LINE": "", "ERROR_LINE": "run_suite.py: error: bad option"}, 255,
     "abort (exit 255): run_suite.py exited 2: bad option"),
    ({"RC": "1", "VERDICT_LINE": ""}, 255,
     "abort (exit 255): run_suite.py exited 1 without a verdict line (a crash, not a result)"),
], ids=["good", "bad", "cannot test", "abort", "usage", "crash"])
def test_exit_codes_and_the_step_line(tree, kw, code, verdict):
    p = bisect_run(tree, **kw)
    assert p.returncode == code, p.stdout + p.stderr
    line = step_line(p)
    assert line.startswith(f"bisect-run: {short(tree)} {verdict} [config "), line


def test_a_commit_that_does_not_build_is_skipped(tree):
    p = bisect_run(tree, env={"FAIL_BUILD": "1"})
    assert p.returncode == 125
    assert "skip (exit 125): the kernel does not build at this commit" in step_line(p)
    assert "error: broken" in p.stderr
    assert not (tree.parent / "args").exists()  # nothing booted


def test_olddefconfig_failure_is_skipped(tree):
    p = bisect_run(tree, env={"FAIL_OLDDEFCONFIG": "1"})
    assert p.returncode == 125 and "olddefconfig failed" in step_line(p)


@pytest.mark.parametrize("breakage,needle", [
    ("merge", "merge_config.sh failed"),
    ("no merge script", "merge_config.sh not found"),
    ("not a tree", "run from the top of a kernel source tree"),
    ("dirty tree for O=", "needs a clean source tree"),
])
def test_harness_problems_abort(tree, breakage, needle):
    args: list[str] = []
    env: dict[str, str] = {}
    if breakage == "merge":
        env["FAIL_MERGE"] = "1"
    elif breakage == "no merge script":
        (tree / "scripts/kconfig/merge_config.sh").unlink()
    elif breakage == "not a tree":
        (tree / "Makefile").unlink()
    else:
        (tree / ".config").write_text("CONFIG_X=y\n")
        args = ["-O", str(tree.parent / "build")]
    p = bisect_run(tree, *args, env=env)
    assert p.returncode == 255, p.stdout + p.stderr
    assert needle in step_line(p) and "abort (exit 255)" in step_line(p)


def test_fragment_holds_what_the_gup_test_kernel_needs():
    text = FRAGMENT.read_text().splitlines()
    for opt in ("CONFIG_USERFAULTFD=y", "CONFIG_TRANSPARENT_HUGEPAGE=y", "CONFIG_GUP_TEST=y",
                "CONFIG_READ_ONLY_THP_FOR_FS=y", "CONFIG_DEBUG_INFO_NONE=y"):
        assert opt in text
