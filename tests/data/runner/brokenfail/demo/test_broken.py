import nonexistent_module_for_kmm_tests  # noqa: F401  (a harness error: the module does not import)


def test_x():
    pass
