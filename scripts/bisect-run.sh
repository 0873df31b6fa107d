#!/usr/bin/env bash
# git bisect run helper: build the kernel in the current tree, boot it under virtme-ng, run the
# selected cases.  Exit 0 good, 1 bad, 125 cannot test (build failure, no boot, all skipped).
#
#   cd ~/linux && git bisect start BAD GOOD
#   git bisect run /path/to/kmm-conformance/scripts/bisect-run.sh 'wp-fork on anon'
set -u
kmm=$(cd "$(dirname "$0")/.." && pwd)
[ -f Makefile ] && [ -d arch/x86 ] || { echo "bisect-run: run from a kernel source tree" >&2; exit 125; }
make -s defconfig >/dev/null 2>&1 || exit 125
scripts/kconfig/merge_config.sh -m .config "$kmm/scripts/kernel.config" >/dev/null || exit 125
make -s olddefconfig >/dev/null || exit 125
make -s -j"$(nproc)" bzImage >/dev/null 2>&1 || exit 125
"$kmm/run_suite.py" --bisect --kernel arch/x86/boot/bzImage "$@"
rc=$?
case $rc in 0|1|125) exit $rc ;; *) exit 125 ;; esac
