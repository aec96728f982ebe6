"""tests/ui: a real Blender window (Debian's blender package) under Xvfb, keys pressed with xdotool."""


def pytest_configure(config):
    config.addinivalue_line("markers", "ui: drives a real Blender window under Xvfb (needs blender, Xvfb, xdotool)")
