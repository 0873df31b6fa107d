#!/usr/bin/env bash
# Create (or refresh) .venv with the suite's dependencies from requirements.txt. Idempotent.
# Prefers the distribution's /usr/bin/python3, whose files every user can read, so the same
# environment also serves an unprivileged run of the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
need() { .venv/bin/python -c 'import pytest, pytest_timeout, pexpect, junitparser' 2>/dev/null; }
if [ ! -x .venv/bin/python ] || ! need; then
  py=""
  for cand in /usr/bin/python3 python3; do
    if "$cand" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null && "$cand" -m venv --help >/dev/null 2>&1; then
      py=$cand; break
    fi
  done
  if [ -z "$py" ]; then
    echo "bootstrap: no python3 >= 3.11 with the venv module (Debian: apt-get install python3-venv)" >&2
    exit 2
  fi
  rm -rf .venv
  "$py" -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
# Byte-compile the project once: every case that spawns a handler process (scm_rights) starts a
# fresh interpreter, which would otherwise recompile lib/ each time when the environment sets
# PYTHONDONTWRITEBYTECODE (about 50 ms a spawn here).  Python reads these even then, and
# ignores any that are older than their source.
.venv/bin/python -m compileall -q lib cases bench conftest.py run_suite.py >/dev/null || true
