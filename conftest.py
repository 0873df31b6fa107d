"""pytest glue for the conformance cases under cases/: the runner plugin (lib/runner/plugin.py:
isolation, names, live TAP, reports, repeats, interrupts) and the case fixtures
(lib/runner/fixtures.py: settings, prepare(), swap_setup, gup_test)."""

pytest_plugins = ["lib.runner.plugin", "lib.runner.fixtures"]
