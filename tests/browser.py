"""Headless Chromium for tests of the operator pages, through playwright's async API (a plugin
of conftest, so any test module can ask for its fixtures).

`browser` is one Chromium per test module, started in the module's event loop: a module using
it runs its tests and its app in that loop (`pytestmark = pytest.mark.asyncio(loop_scope=
"module")`, fixtures with `loop_scope="module"`). `tab` is a page in a fresh context (no
cookies) per test, at a desktop width, that fails the test when a dialog opens and keeps what
the console said. Without Debian's `chromium` or the `playwright` package the tests skip,
saying which is missing; `.ci/run` installs both.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio

if TYPE_CHECKING:
    from playwright.async_api import Browser, BrowserContext, ConsoleMessage, Dialog, Page

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "docs" / "screenshots"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
# Without the background-networking flags Chromium calls Google's hosts, which a closed network
# answers slowly or not at all.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def chromium_path() -> str | None:
    found = shutil.which("chromium")
    if found is None and os.access("/usr/bin/chromium", os.X_OK):
        found = "/usr/bin/chromium"
    return found


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.skip("browser tests: the playwright package is missing (.ci/run installs it)")
    path = chromium_path()
    if path is None:
        pytest.skip("browser tests: chromium is missing (.ci/run installs Debian's chromium)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@dataclass
class Watch:
    """What a page did besides rendering: dialogs it opened, what its console said."""

    dialogs: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)

    def csp_violations(self) -> list[str]:
        return [m for m in self.console if "Content Security Policy" in m]


async def new_page(
    browser: Browser, viewport: dict[str, int] | None = None
) -> tuple[BrowserContext, Page, Watch]:
    """A page in a context of its own (no cookies), watched for dialogs and console messages."""
    context = await browser.new_context(viewport=viewport or DESKTOP)  # type: ignore[arg-type]
    page = await context.new_page()
    watch = Watch()

    async def on_dialog(dialog: Dialog) -> None:
        watch.dialogs.append(f"{dialog.type}: {dialog.message}")
        await dialog.dismiss()

    def on_console(message: ConsoleMessage) -> None:
        watch.console.append(f"{message.type}: {message.text}")

    page.on("dialog", on_dialog)
    page.on("console", on_console)
    return context, page, watch


@dataclass
class Tab:
    page: Page
    watch: Watch


@pytest_asyncio.fixture(loop_scope="module")
async def tab(browser: Browser) -> AsyncIterator[Tab]:
    """A desktop-sized page in a fresh context; the test fails if any dialog opened."""
    context, page, watch = await new_page(browser)
    try:
        yield Tab(page, watch)
    finally:
        await context.close()
    assert not watch.dialogs, f"a dialog opened: {watch.dialogs}"


def screenshots_wanted() -> bool:
    return os.environ.get("LEDGER_SCREENSHOTS") == "1"


async def screenshot(page: Page, name: str, *, full_page: bool = True) -> None:
    """docs/screenshots/<name>.png, only when LEDGER_SCREENSHOTS=1 (the README shows them)."""
    if not screenshots_wanted():
        return
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=full_page)
