"""Negative controls for the foundation's proof cases: each oracle fails when the kernel (or
the handler) misbehaves the way the oracle is meant to catch.

The oracles run in an isolated child (lib.runner.isolation.run_isolated) exactly as under run_suite.py.
"""

from __future__ import annotations

import pytest

from cases.missing import test_api, test_missing_basic
from lib.kernel import uffd
from lib.kernel.handler.options import Options
from lib.kernel.memtypes import MemType
from lib.runner import isolation

ANON = MemType("anon")


def outcome(fn) -> isolation.Outcome:
    return isolation.run_isolated(fn, 30, skip_types=(pytest.skip.Exception,), xfail_types=(pytest.xfail.Exception,))


@pytest.mark.parametrize("op", ["read", "write"])
def test_proof_passes_as_control(op):
    assert outcome(lambda: test_missing_basic.missing_fault_copy(op, ANON)).kind == "pass"


@pytest.mark.parametrize("topology", ["thread", "process", "scm_rights"])
def test_wrong_page_handler_is_caught(topology):
    o = outcome(lambda: test_missing_basic.missing_fault_copy("read", ANON, options=Options(wrong_page=True),
                                                              topology=topology))
    assert o.kind == "fail" and "equals the source page" in o.message


def test_write_flag_on_a_read_is_caught():
    """Expecting a read fault but touching with a write: the flag (or content) check must fail."""
    o = outcome(lambda: test_missing_basic.missing_fault_copy("read", ANON, touch="write"))
    assert o.kind == "fail"


def test_read_flag_on_a_write_is_caught():
    o = outcome(lambda: test_missing_basic.missing_fault_copy("write", ANON, touch="read"))
    assert o.kind == "fail"


def test_extra_present_page_is_caught():
    o = outcome(lambda: test_missing_basic.missing_fault_copy("read", ANON, prefault=(0,)))
    assert o.kind == "fail" and "pagemap present bits" in o.message


def test_api_oracle_catches_a_lenient_handshake(monkeypatch):
    """A kernel accepting api 0xab would be caught: patch the handshake to ignore the api value."""
    real = uffd.Userfaultfd.api

    def lenient(self, features=0, api=0xAA):
        return real(self, features)

    def body():
        monkeypatch.setattr(uffd.Userfaultfd, "api", lenient)
        test_api.test_uffdio_api("syscall")

    o = outcome(body)
    assert o.kind == "fail" and "api 0xab" in o.message and "succeeded" in o.message


def test_api_oracle_catches_a_second_handshake_accepted(monkeypatch):
    real = uffd.Userfaultfd.api

    def forgetful(self, features=0, api=0xAA):
        if self.features and api == 0xAA:  # already initialised: pretend the kernel accepted it again
            return real.__globals__["abi"].uffdio_api(api=api, features=features)
        return real(self, features, api)

    def body():
        monkeypatch.setattr(uffd.Userfaultfd, "api", forgetful)
        test_api.test_uffdio_api("syscall")

    o = outcome(body)
    assert o.kind == "fail" and "second UFFDIO_API" in o.message
