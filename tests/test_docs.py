"""/docs and /redoc in a real headless Chromium, with every request outside the service refused:
the pages must work on a machine without internet access."""

import os
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, Route

from tests.conftest import CHROMIUM, Server
from tests.support import API_KEY

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)"
)
SCREENSHOT = os.environ.get("STATUS_TRACKER_DOCS_SCREENSHOT")


async def offline_page(browser: Browser, server: Server) -> tuple[Page, list[str]]:
    """A page that may only reach the service; what it tried to fetch elsewhere is listed."""
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    elsewhere: list[str] = []

    async def only_the_service(route: Route) -> None:
        url = route.request.url
        if url.startswith(server.url + "/") or url.startswith("data:"):
            await route.continue_()
        else:
            elsewhere.append(url)
            await route.abort()

    await page.route("**/*", only_the_service)
    return page, elsewhere


async def test_swagger_ui_lists_authorizes_and_tries_a_request_offline(
    browser: Browser, server: Server, tmp_path: Path
):
    page, elsewhere = await offline_page(browser, server)
    await page.goto(server.url + "/docs")
    listing = page.locator('.opblock-get:has(.opblock-summary-path[data-path="/v1/messages"])')
    await listing.wait_for(timeout=30_000)
    assert await page.locator(".opblock").count() >= 10
    assert await page.locator(".opblock-post .opblock-summary-path").first.is_visible()
    # The README's picture of /docs is this one (STATUS_TRACKER_DOCS_SCREENSHOT=docs/docs-page.png).
    await page.screenshot(path=SCREENSHOT or str(tmp_path / "docs.png"))

    await page.click("button.authorize")
    await page.locator(".modal-ux input").first.fill(API_KEY)
    await page.click(".modal-ux button.modal-btn.authorize")
    await page.locator(".modal-ux button.modal-btn:has-text('Logout')").wait_for()
    await page.click(".modal-ux button.close-modal")

    await listing.locator(".opblock-summary").first.click()
    await listing.locator("button.try-out__btn").click()
    await listing.locator("button.execute").click()
    status = listing.locator(".live-responses-table .response .response-col_status").first
    await status.wait_for(timeout=30_000)
    assert (await status.inner_text()).strip().startswith("200")
    assert (
        '"messages"'
        in await listing.locator(".live-responses-table .microlight").first.inner_text()
    )
    assert elsewhere == []


async def test_redoc_renders_the_operations_offline(browser: Browser, server: Server):
    page, elsewhere = await offline_page(browser, server)
    await page.goto(server.url + "/redoc")
    heading = page.locator("h2", has_text="Messages, newest first, filtered and paged")
    await heading.first.wait_for(timeout=30_000)
    assert await page.locator("h2").count() >= 10
    assert elsewhere == []
