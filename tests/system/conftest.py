import pytest

from tests.browser import launch_chromium_fixture


@pytest.fixture
def launch_chromium():
    """Call it to get a launched browser (tests/browser.py)."""
    yield from launch_chromium_fixture()
