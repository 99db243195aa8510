"""The console in a real headless Chromium (Debian's `chromium`), against `status-tracker serve`
fed by a replay of signed callbacks: sign in, the overview's charts, a search, a timeline, an
export, a phone-sized screen. Every request outside the service is refused, so the pages must
work offline; no Content-Security-Policy violation may be reported.

STATUS_TRACKER_CONSOLE_SCREENSHOTS=docs/screenshots writes the README's pictures."""

import asyncio
import os
import random
from pathlib import Path

import asyncpg
import httpx
import pytest
from playwright.async_api import Browser, Page

from tests.conftest import CHROMIUM, Server
from tests.support import API_KEY, callback_fields, new_sid, signed
from tests.test_docs import offline_page

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)"
)
SCREENSHOTS = os.environ.get("STATUS_TRACKER_CONSOLE_SCREENSHOTS")

LIFECYCLES = [
    ([("sent", None), ("delivered", None)], "+14155550100"),
    ([("sent", None), ("delivered", None)], "+14155550142"),
    ([("sent", None), ("undelivered", 30003)], "+14155550101"),
    ([("failed", 30007)], "+14155550102"),
    ([("queued", None), ("sent", None), ("delivered", None), ("read", None)], "whatsapp:+4915112345678"),
    ([("sent", None)], "+14155550105"),
]  # fmt: skip


async def replay(server: Server, database_url: str) -> dict[str, str]:
    """Signed callbacks for 120 messages, shuffled, some twice; their SIDs by final status.
    Their creation times are then spread over the last day, so the charts have a shape."""
    rng = random.Random(18)
    finals: dict[str, str] = {}
    requests = []
    for _ in range(120):
        sid = new_sid()
        lifecycle, to = rng.choice(LIFECYCLES)
        finals[sid] = lifecycle[-1][0]
        for status, code in lifecycle:
            extra = {"ErrorCode": str(code)} if code else {}
            fields = callback_fields(sid, status, To=to, **extra)
            requests.extend([signed(fields, public_url=server.url)] * rng.choice([1, 1, 2]))
    rng.shuffle(requests)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        for target, body, headers in requests:
            response = await client.post(target, content=body, headers=headers)
            assert response.status_code == 204
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(
            "UPDATE messages SET created_at = created_at "
            "- (abs(hashtext(sid)) % 22) * interval '1 hour' - interval '5 minutes'"
        )
        await connection.execute(
            "INSERT INTO reconciliations (since, until, dry_run, state, counts, finished_at, "
            "duration_seconds) VALUES (now() - interval '1 day', now(), false, 'finished', "
            '\'{"status_differs": 2, "not_at_twilio": 1}\', now(), 3.2)'
        )
    finally:
        await connection.close()
    return finals


async def shoot(page: Page, name: str, tmp_path: Path) -> None:
    directory = Path(SCREENSHOTS) if SCREENSHOTS else tmp_path
    directory.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(directory / f"console-{name}.png"), full_page=True)


async def test_console_signs_in_charts_a_replay_finds_a_message_and_exports(
    browser: Browser, server: Server, database_url: str, tmp_path: Path
):
    finals = await replay(server, database_url)
    page, elsewhere = await offline_page(browser, server)
    violations: list[str] = []
    page.on(
        "console",
        lambda message: (
            violations.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )

    await page.goto(server.url + "/console")
    assert "/console/sign-in" in page.url
    await shoot(page, "sign-in", tmp_path)
    await page.get_by_label("API key").fill(API_KEY)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(server.url + "/console")

    # The overview: figures and charts drawn from the replay.
    assert await page.locator('[data-figure="total"]').inner_text() == str(len(finals))
    delivered = sum(status in ("delivered", "read") for status in finals.values())
    settled = sum(status != "sent" for status in finals.values())
    rate = await page.locator('[data-figure="delivery-rate"]').inner_text()
    assert rate == f"{delivered / settled * 100:.1f} %"
    bars = page.locator('svg[data-chart="volume"] rect.bar-delivered')
    assert await bars.count() == 24 or await bars.count() == 25
    heights = [float(await bar.get_attribute("height") or 0) for bar in await bars.all()]
    assert sum(height > 0 for height in heights) >= 10
    assert await page.locator('svg[data-chart="rate"] circle.rate').count() >= 10
    assert await page.get_by_role("link", name="30003").count() == 1
    for landmark in ("banner", "navigation", "main", "contentinfo"):
        assert await page.get_by_role(landmark).first.is_visible()
    await shoot(page, "overview", tmp_path)

    # Keyboard: the first Tab reaches the skip link, which leads to the content.
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.textContent") == "Skip to content"

    # Messages: a search by status, then one message opened by its SID.
    await page.get_by_role("link", name="Messages").click()
    await page.get_by_label("Status").select_option("undelivered")
    await page.get_by_role("button", name="Search").click()
    await page.wait_for_url("**/console/messages?status=undelivered**")
    undelivered = [sid for sid, status in finals.items() if status == "undelivered"]
    rows = page.locator("table.messages tbody tr")
    assert await rows.count() == len(undelivered)
    await shoot(page, "messages", tmp_path)

    async with page.expect_download() as download_info:
        await page.get_by_role("link", name="CSV").click()
    download = await download_info.value
    saved = await download.path()
    exported = (await asyncio.to_thread(saved.read_text, encoding="utf-8-sig")).splitlines()
    assert len(exported) == 1 + len(undelivered)
    assert {line.split(",")[1] for line in exported[1:]} == set(undelivered)

    sid = undelivered[0]
    await page.get_by_label("SID or id").fill(sid)
    await page.get_by_label("SID or id").press("Enter")
    await page.wait_for_url("**/console/messages/*")
    assert await page.locator("[data-status]").inner_text() == "undelivered"
    events = page.locator("ol.timeline > li")
    assert await events.count() >= 2
    assert "+14155550101" not in await page.content()
    await page.locator("ol.timeline details summary").first.click()
    assert '"MessageSid"' in await page.locator("ol.timeline details pre").first.inner_text()
    await shoot(page, "message", tmp_path)
    await page.get_by_role("button", name="Reveal numbers and body").click()
    await page.locator('[data-field="to"]', has_text="+14155550101").wait_for()

    await page.get_by_role("link", name="Reconciliations").click()
    await page.locator("table.passes tbody tr").first.wait_for()
    assert "not_at_twilio 1" in await page.locator("table.passes").inner_text()
    await shoot(page, "reconciliations", tmp_path)

    # A phone-sized screen: nothing wider than it.
    await page.set_viewport_size({"width": 360, "height": 740})
    for path in ("/console", "/console/messages", f"/console/messages/{sid}"):
        await page.goto(server.url + path)
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= 360, (path, width)
    await page.goto(server.url + "/console")
    await shoot(page, "overview-360", tmp_path)

    await page.get_by_role("button", name="Sign out").click()
    await page.wait_for_url("**/console/sign-in")
    await page.goto(server.url + "/console")
    assert "/console/sign-in" in page.url
    assert elsewhere == []
    assert violations == []


async def sign_in_at(page: Page, server: Server) -> None:
    await page.goto(server.url + "/console/sign-in")
    await page.get_by_label("API key").fill(API_KEY)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(server.url + "/console")


async def post_callbacks(server: Server, *callbacks: tuple[str, str]) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        for sid, status in callbacks:
            target, body, headers = signed(callback_fields(sid, status), public_url=server.url)
            assert (await client.post(target, content=body, headers=headers)).status_code == 204


async def test_overview_and_timeline_follow_callbacks_on_the_event_stream(
    browser: Browser, server: Server
):
    page, elsewhere = await offline_page(browser, server)
    await sign_in_at(page, server)
    total = page.locator('[data-figure="total"]')
    assert await total.inner_text() == "0"
    await page.locator('main[data-following="events"]').wait_for(timeout=5_000)
    sids = [new_sid() for _ in range(3)]
    await post_callbacks(server, *((sid, "delivered") for sid in sids))
    # No reload, and well within the 15 s of polling (which stays off while the stream is open).
    await page.locator('[data-figure="total"]', has_text="3").wait_for(timeout=5_000)
    assert await page.locator('svg[data-chart="volume"] rect.bar-delivered').count() >= 24

    sid = new_sid()
    await post_callbacks(server, (sid, "sent"))
    await page.goto(server.url + f"/console/messages/{sid}")
    assert await page.locator("[data-status]").inner_text() == "sent"
    await page.locator('main[data-following="events"]').wait_for(timeout=5_000)
    await post_callbacks(server, (sids[0], "read"))  # another message's: not this page's concern
    await post_callbacks(server, (sid, "delivered"))
    await page.locator("[data-status]", has_text="delivered").wait_for(timeout=5_000)
    assert await page.locator("ol.timeline > li").count() == 2
    assert elsewhere == []


async def test_pages_poll_when_the_event_stream_is_out_of_reach(browser: Browser, server: Server):
    page, elsewhere = await offline_page(browser, server)
    await page.route("**/console/events*", lambda route: route.abort())
    await sign_in_at(page, server)
    await page.locator('main[data-following="polling"]').wait_for(timeout=5_000)
    await post_callbacks(server, *((new_sid(), "delivered") for _ in range(3)))
    # The page's script fetches it again within its polling interval (15 s).
    await page.locator('[data-figure="total"]', has_text="3").wait_for(timeout=25_000)
    assert elsewhere == []
