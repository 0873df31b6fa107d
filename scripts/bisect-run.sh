#!/usr/bin/env bash
# git bisect run helper: configure and build the kernel at the current commit, boot it under
# virtme-ng, run the selected cases (run_suite.py --bisect --kernel), and exit as git bisect
# run expects.
#
#   cd ~/linux && git bisect start BAD GOOD
#   git bisect run /path/to/kmm-conformance/scripts/bisect-run.sh [-O DIR] [run_suite args...]
#   e.g.  git bisect run .../bisect-run.sh 'vmsplice*with THP (2048 kB)'
#         git bisect run .../bisect-run.sh --repeat 5 cow        (an intermittent bug)
#
# Configuration: the tree's own .config (in the build directory) is kept; the suite's fragment
# scripts/kernel.config is merged into it (scripts/kconfig/merge_config.sh, then olddefconfig)
# and the options that changed are printed.  Only without a .config does it start from
# `make defconfig`.  A merge that changes nothing leaves .config untouched, so steps stay
# incremental (no make clean, no re-configuration that rebuilds every file).
#
# Out-of-tree builds: -O DIR / --build-dir DIR (first argument), or the kernel's own
# KBUILD_OUTPUT environment variable; relative paths are taken from the tree's top.
#
# Exit codes (git-bisect(1)): 0 good, 1 bad, 125 cannot test (the commit does not configure or
# build, the kernel does not boot, everything skipped, a "cannot test:" case, the VM deadline),
# 255 abort the bisection (a harness problem, not the commit's fault: not a kernel tree, the
# fragment or merge_config.sh missing, the merge failing, run_suite.py's abort code or no
# verdict from it).  Each step ends with one line
#   bisect-run: <short commit> <verdict> (exit N)[: failed: cases] [config Ns, build Ns, test Ns]
# that `git bisect log` readers can match to the step by its commit.
#
# Environment: KMM_RUN_SUITE (the run_suite.py to call; default this checkout's),
# KMM_MAKE_JOBS (default nproc).
set -u
kmm=$(cd "$(dirname "$0")/.." && pwd)
ABORT=255
SKIP=125
fragment=$kmm/scripts/kernel.config
run_suite=${KMM_RUN_SUITE:-$kmm/run_suite.py}
jobs=${KMM_MAKE_JOBS:-$(nproc)}
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
t_config=0
t_build=0
t_test=0

say() { echo "bisect-run: $*"; }
finish() {  # finish CODE VERDICT [DETAIL]: the step's one line, then exit
	local detail=${3:+: $3}
	say "$commit $2 (exit $1)$detail [config ${t_config}s, build ${t_build}s, test ${t_test}s]"
	exit "$1"
}
abort() { say "harness problem: $*" >&2; finish "$ABORT" abort "$*"; }

out=${KBUILD_OUTPUT:-}
case ${1:-} in
-O|--build-dir) [ $# -ge 2 ] || abort "$1 needs a directory"; out=$2; shift 2 ;;
-O*) out=${1#-O}; shift ;;
--build-dir=*) out=${1#--build-dir=}; shift ;;
esac

[ -f Makefile ] && [ -d arch/x86 ] && [ -d mm ] || abort "run from the top of a kernel source tree (cwd: $PWD)"
[ -x scripts/kconfig/merge_config.sh ] || [ -f scripts/kconfig/merge_config.sh ] \
	|| abort "scripts/kconfig/merge_config.sh not found in this tree"
[ -r "$fragment" ] || abort "the suite's config fragment is missing: $fragment"
[ -e "$run_suite" ] || abort "run_suite.py not found: $run_suite"

make_args=(-s)
if [ -n "$out" ]; then
	case $out in /*) ;; *) out=$PWD/$out ;; esac
	mkdir -p "$out" || abort "cannot create the build directory $out"
	if [ -f .config ] || [ -d include/config ]; then
		abort "O=$out needs a clean source tree, but this one holds an in-tree build (make mrproper)"
	fi
	make_args+=("O=$out")
	build=$out
else
	build=$PWD
fi
cfg=$build/.config
tmp=$(mktemp -d "${TMPDIR:-/tmp}/kmm-bisect.XXXXXX") || abort "mktemp failed"
trap 'rm -rf "$tmp"' EXIT

# ---------------------------------------------------------------- configuration
t0=$(date +%s)
if [ -f "$cfg" ]; then
	origin="kept the tree's .config"
else
	if ! make "${make_args[@]}" defconfig >"$tmp/defconfig.log" 2>&1; then
		tail -5 "$tmp/defconfig.log" >&2
		t_config=$(($(date +%s) - t0))
		finish "$SKIP" skip "make defconfig failed at this commit"
	fi
	origin="no .config: started from defconfig"
fi
cp "$cfg" "$tmp/before"
if ! bash scripts/kconfig/merge_config.sh -m -O "$tmp" "$tmp/before" "$fragment" >"$tmp/merge.log" 2>&1; then
	tail -5 "$tmp/merge.log" >&2
	abort "merge_config.sh failed to merge $fragment"
fi
if ! make "${make_args[@]}" KCONFIG_CONFIG="$tmp/.config" olddefconfig >"$tmp/olddefconfig.log" 2>&1; then
	tail -5 "$tmp/olddefconfig.log" >&2
	t_config=$(($(date +%s) - t0))
	finish "$SKIP" skip "make olddefconfig failed at this commit"
fi
# Which options the fragment (and olddefconfig) changed; only then is .config rewritten.
changed=$(diff <(grep -E '^(CONFIG_|# CONFIG_.* is not set)' "$tmp/before" | sort) \
	<(grep -E '^(CONFIG_|# CONFIG_.* is not set)' "$tmp/.config" | sort) \
	| sed -n 's/^> //p' | sed -E 's/^# (CONFIG_[A-Za-z0-9_]*) is not set/\1=n/' | tr '\n' ' ')
if [ -n "$changed" ]; then
	cp "$tmp/.config" "$cfg"
	say "config: $origin; the fragment changed: ${changed% }"
else
	say "config: $origin; the fragment changed nothing"
fi
t_config=$(($(date +%s) - t0))

# ---------------------------------------------------------------- build
t0=$(date +%s)
blog=$build/.kmm-bisect-build.log
if ! make "${make_args[@]}" -j"$jobs" bzImage >"$blog" 2>&1; then
	t_build=$(($(date +%s) - t0))
	grep -m3 -E 'error|Error' "$blog" >&2
	finish "$SKIP" skip "the kernel does not build at this commit (log: $blog)"
fi
t_build=$(($(date +%s) - t0))
image=$build/arch/x86/boot/bzImage
[ -f "$image" ] || abort "the build succeeded but $image is missing"

# ---------------------------------------------------------------- test
t0=$(date +%s)
"$run_suite" --bisect --kernel "$image" "$@" 2>&1 | tee "$tmp/run.log"
rc=${PIPESTATUS[0]}
t_test=$(($(date +%s) - t0))
verdict=$(sed -n 's/^# bisect: //p' "$tmp/run.log" | tail -1)
case $rc in
0|1|125)
	[ -n "$verdict" ] || abort "run_suite.py exited $rc without a verdict line (a crash, not a result)"
	finish "$rc" "${verdict%% (exit*}" "$(printf '%s' "$verdict" | sed -n 's/^[a-z]* (exit [0-9]*): //p')"
	;;
*)
	problem=$(grep -m1 '^run_suite.py: error: ' "$tmp/run.log" | sed 's/^run_suite.py: error: //')
	abort "run_suite.py exited $rc: ${problem:-no verdict}"
	;;
esac
