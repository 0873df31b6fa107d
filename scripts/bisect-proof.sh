#!/usr/bin/env bash
# End-to-end proof of the README's bisection recipe on a real kernel tree (not run in CI: it
# builds kernels).  It makes a synthetic seven-commit git history from Debian's linux-source-6.12
# with one planted one-line bug, then runs, exactly as the README says,
#
#     git bisect start master good
#     git bisect run <kmm>/scripts/bisect-run.sh 'vmsplice*with THP (2048 kB)'
#
# and checks that the first bad commit git names is the planted one.
#
# The planted bug: in mm/huge_memory.c do_huge_pmd_wp_page(), after taking the folio lock, a
# write fault on a PMD-mapped anonymous THP that is not PageAnonExclusive reuses the folio when
# only one process maps it, ignoring the extra reference a vmsplice() pipe holds.  The parent's
# write then shows through the child's pipe: the cow area's "vmsplice ... with THP (2048 kB)"
# cases fail with "Leak from parent into child".  (The unpatched kernel refuses reuse while
# folio_ref_count() shows any reference beyond the mapping.)
#
# Usage: scripts/bisect-proof.sh [--work DIR] [--source TARBALL] [--prepare-only]
#                                [--save-good PATH]
#   --work DIR       work folder outside the repository (default $KMM_PROOF_DIR or
#                    /var/tmp/kmm-bisect-proof); the tree is kept there and reused on a re-run
#   --source FILE    kernel source tarball (default /usr/src/linux-source-6.12.tar.xz)
#   --prepare-only   make the history, configure and build master, then stop
#   --save-good PATH afterwards build the planted commit's parent and copy its bzImage to PATH
#
# Environment: KMM_MAKE_JOBS (make -j, default nproc; bisect-run.sh reads it too).
# Exit 0 when git names the planted commit, 1 when it names another (or none), 2 on bad usage
# or a preparation step that failed.  Step times go to stdout and $WORK/times.txt.
set -euo pipefail

kmm=$(cd "$(dirname "$0")/.." && pwd)
work=${KMM_PROOF_DIR:-/var/tmp/kmm-bisect-proof}
source_tar=/usr/src/linux-source-6.12.tar.xz
prepare_only=0
save_good=""
case_pattern='vmsplice*with THP (2048 kB)'

die() { echo "bisect-proof: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
	case $1 in
	--work) [ $# -ge 2 ] || die "--work needs a folder"; work=$2; shift 2 ;;
	--source) [ $# -ge 2 ] || die "--source needs a tarball"; source_tar=$2; shift 2 ;;
	--prepare-only) prepare_only=1; shift ;;
	--save-good) [ $# -ge 2 ] || die "--save-good needs a path"; save_good=$(realpath -m "$2"); shift 2 ;;
	-h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) die "unknown argument: $1 (see --help)" ;;
	esac
done
work=$(realpath -m "$work")
case $work/ in "$kmm"/*) die "the work folder must be outside the repository ($kmm)" ;; esac
tree=$work/linux
mkdir -p "$work"
times=$work/times.txt

t0=0
start() { t0=$(date +%s); }
took() {  # took LABEL [RC]: record the wall time since start
	printf '%-44s %5d s (exit %d)\n' "$1" $(($(date +%s) - t0)) "${2:-0}" | tee -a "$times"
}
build() {  # build LOG: an incremental bzImage build
	make -s -j"${KMM_MAKE_JOBS:-$(nproc)}" bzImage >"$1" 2>&1
}

commit() {  # commit MESSAGE: commit everything staged and unstaged, deterministic identity
	git add -A
	GIT_AUTHOR_NAME="kmm proof" GIT_AUTHOR_EMAIL=proof@kmm.invalid \
	GIT_COMMITTER_NAME="kmm proof" GIT_COMMITTER_EMAIL=proof@kmm.invalid \
		git commit -q -m "$1"
}

append() {  # append FILE LINE: a harmless change
	printf '%s\n' "$2" >> "$1"
}

make_history() {
	rm -rf "$tree" "$work/linux-source-6.12"
	[ -r "$source_tar" ] || die "cannot read $source_tar (apt-get install linux-source-6.12)"
	tar -xJf "$source_tar" -C "$work"
	mv "$work/linux-source-6.12" "$tree"
	cd "$tree"
	# Debian's top-level .gitignore ignores everything outside debian/ ("/*"): drop that block
	# so the tree can be committed as an upstream-like history.
	sed -i '/^# Debian packaging/,/^!\/debian\/$/d' .gitignore
	git init -q -b master
	git config gc.auto 0
	commit "base: Debian linux-source-6.12"
	[ "$(git ls-files | wc -l)" -gt 50000 ] || die "the base commit holds too few files (.gitignore?)"
	git tag good
	append Documentation/admin-guide/mm/transhuge.rst ".. proof commit 2: documentation only"
	commit "docs: a line in transhuge.rst"
	append mm/memory.c "/* proof commit 3: comment only */"
	commit "mm/memory: comment"
	append mm/gup.c "/* proof commit 4: comment only */"
	commit "mm/gup: comment"
	sed -i 's/^\tif (PageAnonExclusive(page)) {$/\tif (PageAnonExclusive(page) || folio_mapcount(folio) == 1) {/' \
		mm/huge_memory.c
	[ "$(git diff --numstat)" = "$(printf '1\t1\tmm/huge_memory.c')" ] \
		|| die "planting the bug did not change exactly one line of mm/huge_memory.c"
	commit "mm/huge_memory: reuse a PMD THP mapped only once on write fault (planted bug)"
	git tag kmm-proof-planted
	append mm/khugepaged.c "/* proof commit 6: comment only */"
	commit "mm/khugepaged: comment"
	append README "proof commit 7: documentation only"
	commit "README: a line"
}

configure() {  # a small virtme-ng configuration with the suite's fragment (kept by bisect-run.sh)
	PATH="$kmm/.venv/bin:$PATH" "$kmm/.venv/bin/vng" --kconfig --config "$kmm/scripts/kernel.config" \
		>"$work/kconfig.log" 2>&1 || { tail -5 "$work/kconfig.log" >&2; die "vng --kconfig failed (log: $work/kconfig.log)"; }
	# virtme-ng forces DWARF debug info on after every fragment: turn it off (a smaller, faster build)
	scripts/config --disable DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT --enable DEBUG_INFO_NONE
	make -s olddefconfig >>"$work/kconfig.log" 2>&1 || die "make olddefconfig failed (log: $work/kconfig.log)"
	for opt in CONFIG_GUP_TEST=y CONFIG_READ_ONLY_THP_FOR_FS=y CONFIG_DEBUG_INFO_NONE=y; do
		grep -qx "$opt" .config || die "configuration lacks $opt (log: $work/kconfig.log)"
	done
}

echo "bisect-proof: work folder $work, $(nproc) CPUs, $(date -u +%FT%TZ)" | tee -a "$times"
if [ -d "$tree/.git" ] && git -C "$tree" rev-parse -q --verify kmm-proof-planted >/dev/null; then
	echo "bisect-proof: reusing the history in $tree" | tee -a "$times"
	cd "$tree"
	git bisect reset >/dev/null 2>&1 || true
	git checkout -q master
else
	start
	make_history
	took "extract + seven-commit history"
	cd "$tree"
fi
if [ ! -f .config ]; then
	start
	configure
	took "configure (vng --kconfig + fragment)"
fi
start
build "$work/build-master.log" || die "building master failed (log: $work/build-master.log)"
took "build master (the developer's own build)"
[ "$prepare_only" = 1 ] && { echo "bisect-proof: prepared $tree"; exit 0; }

planted=$(git rev-parse kmm-proof-planted)
git bisect start master good
start
rc=0
git bisect run "$kmm/scripts/bisect-run.sh" "$case_pattern" 2>&1 | tee "$work/bisect-run.log" || rc=$?
echo  # git's last line has no newline
took "git bisect run (all steps)" "$rc"
grep '^bisect-run: ' "$work/bisect-run.log" | tee -a "$times" || true
git bisect log >"$work/bisect.log"
first_bad=$(git rev-parse -q --verify refs/bisect/bad || echo none)
found=$(grep -c "is the first bad commit" "$work/bisect-run.log" || true)
git bisect reset -q master >/dev/null 2>&1 || git bisect reset >/dev/null
verdict=1
if [ "$found" -ge 1 ] && [ "$first_bad" = "$planted" ]; then
	echo "bisect-proof: PASSED: git named $(git rev-parse --short "$planted") (the planted commit) as the first bad commit" | tee -a "$times"
	verdict=0
else
	echo "bisect-proof: FAILED: first bad commit $first_bad, planted $planted (log: $work/bisect-run.log)" | tee -a "$times"
fi

if [ -n "$save_good" ]; then
	git checkout -q kmm-proof-planted^
	start
	build "$work/build-good.log" || die "building the good commit failed (log: $work/build-good.log)"
	took "build the planted commit's parent"
	mkdir -p "$(dirname "$save_good")"
	cp arch/x86/boot/bzImage "$save_good"
	echo "bisect-proof: good kernel ($(make -s kernelrelease)) saved as $save_good" | tee -a "$times"
	git checkout -q master
fi
exit "$verdict"
