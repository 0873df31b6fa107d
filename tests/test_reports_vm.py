"""A ``--kernel`` run interrupted with SIGINT leaves every report, saying so (the stand-in for
vng from tests/test_vmrun.py runs the guest command on this machine)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from xml.etree import ElementTree as ET

from tests import junit_schema
from tests.test_vmrun import DATA, PRIVATE_STATE, ROOT, RUNS, fake, root_only


@root_only
def test_sigint_during_a_kernel_run_leaves_junit(tmp_path):
    image, env = fake(tmp_path, RUNS)
    env = dict(env, KMM_CASES=str(DATA / "slow"), KMM_STATE_DIR=PRIVATE_STATE)
    res = tmp_path / "r"
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_suite.py"), "--kernel", image, f"--results={res}"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("ok 2 "):
            proc.send_signal(signal.SIGINT)
            break
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in err, err
    s = json.loads((res / "summary.json").read_text())
    assert s["partial"] is True and s["partial_reason"] == "interrupted (SIGINT)" and s["exit_code"] == 1
    assert len(s["planned"]) == 20 and len(s["not_run"]) == 20 - len(s["cases"])
    assert junit_schema.check_file(str(res / "junit.xml")) == []
    cases = {c.get("name"): c for c in ET.parse(res / "junit.xml").getroot().iter("testcase")}
    assert len(cases) == 21
    assert "interrupted (SIGINT)" in cases["run completed"].find("error").get("message")
    assert (res / "results.tap").exists()
    leftovers = subprocess.run(["pgrep", "-f", f"--results={res}"], capture_output=True, text=True)
    assert leftovers.stdout == "", "the guest command was ended with the run"
