import nonexistent_module_xyz  # noqa: F401


def test_x():
    pass
