"""Headless Chromium for the browser tests: Debian's `chromium` package driven by
Playwright's Python package, no browser download. Screenshots go to test-output/
(git-ignored). Environment: CHROMIUM_PATH (default /usr/bin/chromium). Without Chromium
or the playwright package a browser test is skipped locally and fails in CI (CI=true).
"""

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
OUTPUT = Path(os.environ.get("TEST_OUTPUT_DIR", ROOT / "test-output"))


def _unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"browser test cannot run in CI: {reason}")
    pytest.skip(reason)


def launch_chromium_fixture():
    """Call it to get a launched browser. Lazy on purpose: once Playwright's event loop
    runs in this thread Django refuses ORM calls, so the test touches the database
    first and starts the browser last."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable(
            "the playwright package is not installed (pip install playwright; never `playwright install`)"
        )
    if not (os.path.isfile(CHROMIUM) or shutil.which(CHROMIUM)):
        _unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium chromium-driver)")
    started = []

    def launch():
        playwright = sync_playwright().start()
        started.append(playwright)
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS
        )
        started.append(browser)
        return browser

    yield launch
    for thing in reversed(started):
        thing.close() if hasattr(thing, "new_page") else thing.stop()
