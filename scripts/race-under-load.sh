#!/bin/bash
# The REMOVE race cases must agree over repeats while a QEMU guest loads the CPUs (issue 13).
#
# 1. starts `run_suite.py --kernel IMAGE <guest selection>` in the background (the guest is a
#    TCG QEMU with 2 vCPUs running a long suite selection);
# 2. waits, with a deadline, until the guest is actually running cases: its TAP stream shows a
#    case line (the guest's suite prints it over the console) and its QEMU process is alive;
# 3. runs the race cases (cases/remove/test_race.py and test_gated.py, cases/hugetlb/
#    test_madv_races.py, uffd_ops' DONTWAKE cases) with --repeat on the host;
# 4. checks that the guest was still running when the host run ended, stops it (SIGTERM to the
#    runner, then SIGKILL by pid to whatever is left of its process tree) and reports how many
#    CPUs QEMU kept busy meanwhile;
# 5. exits 0 only if every race case passed (or skipped) with the same verdict in every repeat.
#
#   scripts/race-under-load.sh [--kernel IMAGE] [--repeat N] [--guest "SELECTION"] [--results DIR]
#
# Host suite runs take a machine-wide lock (others' runs may make the host part wait); the guest
# run does not.  Needs root, like run_suite.py.
set -u
cd "$(dirname "$0")/.." || exit 2

KERNEL=/boot/vmlinuz-6.12.118+deb12-amd64
REPEAT=10
GUEST_SELECTION="cow --repeat 100"  # hours of work: it outlasts any host run (the script stops it)
# the race cases: REMOVE's handler-barrier races, the hugetlb fault-vs-MADV_DONTNEED races and
# uffd_ops' DONTWAKE cases (judged by the faulting task's state)
HOST_SELECTION=(remove hugetlb uffd_ops -k "test_race or test_gated or test_madv_races or DONTWAKE")
OUT=""
BOOT_DEADLINE=900  # seconds for the guest to boot and start its first case (TCG is slow)

while [ $# -gt 0 ]; do
    case "$1" in
        --kernel) KERNEL=$2; shift 2 ;;
        --repeat) REPEAT=$2; shift 2 ;;
        --guest) GUEST_SELECTION=$2; shift 2 ;;
        --results) OUT=$2; shift 2 ;;
        *) echo "race-under-load.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ -r "$KERNEL" ] || { echo "race-under-load.sh: no kernel image $KERNEL" >&2; exit 2; }
[[ "$REPEAT" =~ ^[0-9]+$ ]] && [ "$REPEAT" -ge 2 ] || { echo "race-under-load.sh: --repeat needs N >= 2" >&2; exit 2; }
OUT=${OUT:-results/race-under-load-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"

# -- 1. the guest ------------------------------------------------------------------------------
# shellcheck disable=SC2086  # the guest selection is a list of words
./run_suite.py --kernel "$KERNEL" --vm-timeout 7200 --results "$OUT/guest" $GUEST_SELECTION \
    >"$OUT/guest.out" 2>&1 &
GPID=$!

descendants() {  # every process below pid $1 (vng runs QEMU in a session of its own)
    ps -eo pid=,ppid= | awk -v root="$1" '
        { parent[$1] = $2 }
        END { n = 1; todo[1] = root
              while (n > 0) { p = todo[n--]
                  for (c in parent) if (parent[c] == p) { print c; todo[++n] = c } } }'
}
stop_guest() {  # the runner ends its VM on SIGTERM; anything left of the tree is killed by pid
    local left
    left=$(descendants "$GPID")
    kill -TERM "$GPID" 2>/dev/null
    for _ in $(seq 120); do  # up to 60 s for the runner to finish
        kill -0 "$GPID" 2>/dev/null || break
        sleep 0.5
    done
    kill -KILL "$GPID" 2>/dev/null
    for p in $left; do kill -KILL "$p" 2>/dev/null; done
    wait "$GPID" 2>/dev/null
}
trap stop_guest EXIT

qemu_pid() {
    local p
    for p in $(descendants "$GPID"); do
        case "$(cat "/proc/$p/comm" 2>/dev/null)" in qemu-system*) echo "$p"; return ;; esac
    done
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null; }

# -- 2. wait until the guest runs cases -------------------------------------------------------
echo "# waiting for the guest ($KERNEL: $GUEST_SELECTION) to run its first case"
end=$((SECONDS + BOOT_DEADLINE))
until grep -qE '^(# \[RUN\]|ok |not ok )' "$OUT/guest.out" 2>/dev/null && [ -n "$(qemu_pid)" ]; do
    if ! kill -0 "$GPID" 2>/dev/null; then
        echo "race-under-load.sh: the guest run ended before running a case:"; tail -5 "$OUT/guest.out"; exit 1
    fi
    [ $SECONDS -lt $end ] || { echo "race-under-load.sh: guest not running a case within ${BOOT_DEADLINE}s"; exit 1; }
    sleep 0.5  # polling an observed state, with the deadline above
done
QPID=$(qemu_pid)
echo "# guest running: $(grep -m1 -E '^(# \[RUN\]|ok |not ok )' "$OUT/guest.out") (QEMU pid $QPID)"

# -- 3. the race cases on the host ------------------------------------------------------------
: >"$OUT/load.samples"
./run_suite.py "${HOST_SELECTION[@]}" --repeat "$REPEAT" --results "$OUT/host" >"$OUT/host.out" 2>&1 &
HPID=$!
# sample, once a second, QEMU's CPU time and the machine's (/proc/stat) while the host run
# lives; the report uses the samples inside the run's own time (after it got the run lock)
while kill -0 "$HPID" 2>/dev/null; do
    echo "$(date +%s.%N) $(cpu_ticks "$QPID") $(head -1 /proc/stat | cut -d' ' -f2-)" >>"$OUT/load.samples"
    sleep 1
done
wait "$HPID"
host_rc=$?
guest_alive=yes
kill -0 "$QPID" 2>/dev/null || guest_alive=no
guest_cases=$(grep -cE '^(ok|not ok) ' "$OUT/guest.out")

# -- 4. stop the guest --------------------------------------------------------------------------
stop_guest
trap - EXIT

# -- 5. verdicts --------------------------------------------------------------------------------
hz=$(getconf CLK_TCK)
.venv/bin/python - "$OUT/host/summary.json" "$host_rc" "$guest_alive" "$OUT/load.samples" "$hz" \
    "$guest_cases" "$(nproc)" <<'EOF'
import json
import sys

path, rc, alive, samples_path, hz, guest_cases, ncpu = sys.argv[1:]
try:
    s = json.load(open(path))
except (OSError, ValueError) as e:
    print(f"race-under-load: no host summary ({e}); run_suite exit {rc}")
    sys.exit(1)
cases = s["cases"]
bad = []
for c in cases:
    kinds = c.get("repeats") or [c["verdict"]]
    if len(set(kinds)) != 1 or kinds[0] not in ("pass", "skip"):
        bad.append(f"{c['name']}: {', '.join(kinds)} ({c.get('message', '')[:200]})")
runs = sum(len(c.get("repeats") or [1]) for c in cases)
start, wall = s["started_epoch"], s["duration"]
rows = []
for line in open(samples_path):
    f = line.split()
    if len(f) > 3 and f[1].isdigit() and start <= float(f[0]) <= start + wall:
        jiffies = [int(x) for x in f[2:10]]  # user..steal (guest time is inside user)
        rows.append((float(f[0]), int(f[1]), sum(jiffies), jiffies[3] + jiffies[4]))  # idle + iowait
if len(rows) >= 2:
    (ta, qa, alla, idlea), (tb, qb, allb, idleb) = rows[0], rows[-1]
    qemu = (qb - qa) / int(hz) / (tb - ta)
    machine = (1 - (idleb - idlea) / max(1, allb - alla)) * int(ncpu)
    load = f"the guest's QEMU used {qemu:.2f} CPUs, the machine {machine:.2f} of {ncpu} CPUs busy"
else:
    load = "too short to sample the load"
print(f"race-under-load: {len(cases)} race cases x {s['run']['option.repeat']} repeats = {runs} runs in "
      f"{wall:.0f} s on the host (after the run lock); totals {s['totals']}; run_suite exit {rc}")
print(f"race-under-load: meanwhile {load}; guest cases finished {guest_cases}; guest still running at the "
      f"end: {alive}")
for line in bad:
    print("race-under-load: DIFFERED OR FAILED:", line)
ok = not bad and rc == "0" and alive == "yes"
if alive != "yes":
    print("race-under-load: the guest ended before the host run did: the load did not cover the run")
sys.exit(0 if ok else 1)
EOF
