"""Browser tests: Debian's headless Chromium driven by Playwright for Python (its own browser
builds are never downloaded: it is pointed at /usr/bin/chromium, which scripts/test installs),
against a real control plane and real sidecars (meshline.testing).

Each test gets a fresh browser profile; console errors and uncaught exceptions are collected
and checked. Screenshots go to ``build/browser-screenshots/`` (git-ignored)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page

pytestmark = pytest.mark.e2e

SCREENSHOTS = Path(__file__).resolve().parents[2] / "build" / "browser-screenshots"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]  # fmt: skip


def _missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        _missing("chromium is not installed (Debian: apt-get install chromium; scripts/test installs it as root)")
    return str(found)


class Browser:
    """One Chromium with a fresh profile; ``errors`` collects console errors and page exceptions."""

    def __init__(self, context: BrowserContext) -> None:
        self.context = context
        self.errors: list[str] = []

    def page(self, width: int = 1280, height: int = 900) -> Page:
        page = self.context.new_page()
        page.set_viewport_size({"width": width, "height": height})
        page.on("console", lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"exception: {e}"))
        return page


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (./scripts/bootstrap dev installs it)")
        raise
    from playwright.sync_api import expect

    binary = chromium()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    expect.set_options(timeout=15_000)  # a shared 2-core machine: what comes in 50 ms may take seconds
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=binary, headless=True, args=FLAGS,
        )
        try:
            yield Browser(context)
        finally:
            context.close()
