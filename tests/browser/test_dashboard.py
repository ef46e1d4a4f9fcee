"""The dashboard in a real headless Chromium against ``hutch dev`` (issue 14 items 1 and 2, SPEC §13)."""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from playwright.sync_api import Page, expect

from tests.browser.conftest import TOKEN, Api, sign_in, stop, workflow_args
from tests.helpers import unique
from tests.test_cli_rest import Server, clean_env, drop_queues_and_namespace, poll, start_server

DOCS = Path(__file__).resolve().parents[2] / "docs"
LIVE_S = 15_000  # ms: how long the page may take to show a change


def open_instance(page: Page, url: str, workflow: str, instance_id: str) -> None:
    page.goto(f"{url}/ui/instance/{workflow}/{instance_id}")
    expect(page.locator("#status .badge")).not_to_be_empty()


def test_sign_in_keeps_the_token_in_a_strict_http_only_cookie(context, dev: Server) -> None:
    page = context.new_page()
    page.goto(f"{dev.url}/ui/instances?workflow=gated")
    assert "/ui/signin" in page.url  # not signed in: sent to the sign-in page, remembering where to go
    page.fill("#token", "not-the-token")
    page.click("button[type=submit]")
    expect(page.locator("[role=alert]")).to_contain_text("not one of this gateway's API tokens")
    page.fill("#token", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/ui/instances\?workflow=gated"))
    (cookie,) = [c for c in context.cookies() if c["name"] == "hutch_session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # the page's scripts cannot read the token
    page.click("#signout button")
    page.wait_for_url(re.compile(r"/ui/signin"))
    page.goto(f"{dev.url}/")
    assert "/ui/signin" in page.url


def test_workflows_page_counts_and_throughput(page: Page, api: Api, dev: Server) -> None:
    iid = unique("count")
    api.create("sleeper", iid)
    page.reload()
    row = page.locator("#workflows tr[data-workflow=sleeper]")
    expect(row.locator("td[data-col=created]")).not_to_have_text("0")
    assert int(row.locator("td[data-col=created]").inner_text()) >= 1


def test_search_filters_by_status_prefix_and_order(page: Page, api: Api, dev: Server) -> None:
    prefix = unique("srch")
    for n in range(3):
        api.create("sleeper", f"{prefix}-{n}")
    api.create("failing", f"{prefix}-f")
    page.goto(f"{dev.url}/ui/instances?workflow=sleeper")
    page.fill("#id_prefix", prefix)
    page.press("#id_prefix", "Enter")
    rows = page.locator("#instances tbody tr")
    expect(rows).to_have_count(3)
    expect(rows.first).to_have_attribute("data-id", f"{prefix}-2")  # newest first
    page.select_option("#order", "oldest")
    page.click("#filters button[type=submit]")
    expect(rows.first).to_have_attribute("data-id", f"{prefix}-0")
    # A status filter: the failing workflow's instance ends errored.
    page.select_option("#workflow", "failing")
    page.select_option("#status", "errored")
    page.click("#filters button[type=submit]")
    expect(page.locator(f"#instances tbody tr[data-id='{prefix}-f']")).to_be_visible(timeout=LIVE_S)
    page.select_option("#status", "complete")
    page.click("#filters button[type=submit]")
    expect(page.locator(f"#instances tbody tr[data-id='{prefix}-f']")).to_have_count(0)


def test_a_step_completes_live_and_html_shows_as_text(page: Page, api: Api, dev: Server) -> None:
    iid = unique("live")
    script = "<script>window.pwned = 1</script><b>bold</b>"
    api.create("gated", iid, {"note": script})
    open_instance(page, dev.url, "gated", iid)
    expect(page.locator("#status .badge")).to_have_text("waiting", timeout=LIVE_S)
    expect(page.locator("#timeline li[data-step=finish]")).to_have_count(0)
    api.event("gated", iid, "go", {"html": "<img src=x onerror=window.pwned=2>"})
    # No reload: the server-sent events bring the new step and the new status.
    expect(page.locator("#timeline li[data-step=finish]")).to_have_attribute("data-state", "done", timeout=LIVE_S)
    expect(page.locator("#status .badge")).to_have_text("complete", timeout=LIVE_S)
    expect(page.locator("#output")).to_contain_text(script)
    expect(page.locator("#params")).to_contain_text(script)
    assert page.evaluate("window.pwned") is None
    assert page.locator("#output b, #output img, #params b").count() == 0


def test_the_diagram_colours_nodes_by_state(page: Page, api: Api, dev: Server) -> None:
    iid = unique("diag")
    api.create("gated", iid)
    open_instance(page, dev.url, "gated", iid)
    node = page.locator("#diagram .node")
    expect(node.filter(has_text="prepare")).to_have_attribute("data-state", "complete", timeout=LIVE_S)
    expect(node.filter(has_text="wait for go")).to_have_attribute("data-state", "waiting")
    expect(node.filter(has_text="finish")).to_have_attribute("data-state", "pending")
    api.event("gated", iid, "go", None)
    expect(node.filter(has_text="finish")).to_have_attribute("data-state", "complete", timeout=LIVE_S)


def test_timeline_shows_failed_attempts_with_their_errors_as_text(page: Page, api: Api, dev: Server) -> None:
    iid = unique("fail")
    api.create("failing", iid)
    open_instance(page, dev.url, "failing", iid)
    expect(page.locator("#status .badge")).to_have_text("errored", timeout=LIVE_S)
    row = page.locator("#timeline li[data-step=explode]")
    expect(row.locator(".seg.attempt.failed")).to_have_count(2)
    expect(row.locator(".seg.retry-wait")).to_have_count(1)
    expect(row.locator(".errors")).to_contain_text("<img src=x onerror=alert(1)> went wrong")
    expect(page.locator("#diagram .node", has_text="explode")).to_have_attribute("data-state", "errored")


def test_each_action_from_the_instance_page(page: Page, api: Api, dev: Server, console) -> None:
    iid = unique("act")
    api.create("sleeper", iid)
    open_instance(page, dev.url, "sleeper", iid)
    badge = page.locator("#status .badge")
    expect(badge).to_have_text("waiting", timeout=LIVE_S)
    page.click("[data-action=pause]")
    expect(badge).to_have_text("paused", timeout=LIVE_S)
    assert api.status("sleeper", iid) == "paused"
    # Keyboard: focus Resume and press Enter.
    page.focus("[data-action=resume]")
    page.keyboard.press("Enter")
    expect(badge).to_have_text("waiting", timeout=LIVE_S)
    page.click("[data-action=restart]")
    expect(page.locator("#info")).to_contain_text("restart", timeout=LIVE_S)
    expect(badge).to_have_text("waiting", timeout=LIVE_S)
    page.click("[data-action=terminate]")
    expect(badge).to_have_text("terminated", timeout=LIVE_S)
    assert api.status("sleeper", iid) == "terminated"
    page.click("[data-action=pause]")  # a finished instance cannot be paused: the API's reason is shown
    expect(page.locator("#error")).to_contain_text("pause failed")
    console.allow("status of 409")


def test_restart_from_a_step_chosen_on_the_timeline(page: Page, api: Api, dev: Server) -> None:
    iid = unique("rfrom")
    api.create("sleeper", iid)
    open_instance(page, dev.url, "sleeper", iid)
    expect(page.locator("#status .badge")).to_have_text("waiting", timeout=LIVE_S)
    before = step_starts(api, "sleeper", iid)
    button = page.locator("#restart-from")
    expect(button).to_be_disabled()
    page.click("#timeline li[data-step=nap] button.step")
    expect(button).to_be_enabled()
    button.click()
    expect(page.locator("#info")).to_contain_text("restart_from: done", timeout=LIVE_S)
    after = poll(lambda: (s := step_starts(api, "sleeper", iid))["nap"] != before["nap"] and s, timeout=15.0)
    assert after["first"] == before["first"]  # the step before the one chosen was kept, not run again
    assert api.status("sleeper", iid) == "waiting"


def step_starts(api: Api, workflow: str, instance_id: str) -> dict[str, str]:
    steps = api.describe(workflow, instance_id)["steps"]
    assert isinstance(steps, list)
    return {s["name"]: s["start"] for s in steps}


def test_events_are_validated_before_sending(page: Page, api: Api, dev: Server) -> None:
    iid = unique("evt")
    api.create("gated", iid)
    open_instance(page, dev.url, "gated", iid)
    expect(page.locator("#status .badge")).to_have_text("waiting", timeout=LIVE_S)
    page.fill("#event-type", "go")
    page.fill("#event-payload", '{"approved": tru')
    page.click("#event-form button[type=submit]")
    expect(page.locator("#error")).to_contain_text("not valid JSON")
    expect(page.locator("#event-payload")).to_have_attribute("aria-invalid", "true")
    assert api.status("gated", iid) == "waiting"  # nothing was sent
    page.fill("#event-payload", '{"approved": true}')
    page.click("#event-form button[type=submit]")
    expect(page.locator("#status .badge")).to_have_text("complete", timeout=LIVE_S)
    assert api.describe("gated", iid)["output"]["go"] == {"approved": True}  # type: ignore[index]


def test_bulk_terminate_with_progress(page: Page, api: Api, dev: Server) -> None:
    prefix = unique("bulk")
    ids = [f"{prefix}-{n}" for n in range(6)]
    for iid in ids:
        api.create("sleeper", iid)
    page.goto(f"{dev.url}/ui/instances?workflow=sleeper&id_prefix={prefix}")
    expect(page.locator("#instances tbody tr")).to_have_count(6)
    page.check("#select-all")
    expect(page.locator("#selected-count")).to_have_text("6 selected")
    page.click("[data-bulk=terminate]")
    expect(page.locator("#bulk-status")).to_have_text("terminate: 6 of 6 done", timeout=LIVE_S)
    expect(page.locator("#bulk-progress")).to_have_attribute("value", "6")
    assert {api.status("sleeper", iid) for iid in ids} == {"terminated"}
    expect(page.locator("#instances tbody td[data-status=terminated]")).to_have_count(6)


def test_cross_site_requests_are_refused(context, page: Page, api: Api, dev: Server, console) -> None:
    iid = unique("csrf")
    api.create("sleeper", iid)
    target = f"{dev.url}/ui/data/instance/sleeper/{iid}/action"
    # A page of another site posts to the dashboard from the signed-in browser: the Strict cookie
    # is not sent, so it is refused.
    evil = context.new_page()
    evil.route(
        "http://evil.test/", lambda route: route.fulfill(content_type="text/html", body="<html><body>hi</body></html>")
    )
    evil.goto("http://evil.test/")
    sent = evil.evaluate(
        """async (url) => { try { await fetch(url, {method: "POST", mode: "no-cors", credentials: "include",
             body: JSON.stringify({action: "terminate"})}); return "sent"; } catch (e) { return String(e); } }""",
        target,
    )
    assert sent == "sent" or "Failed to fetch" in sent  # Chromium may block it outright (private network access)
    console.allow("evil.test", "ERR_FAILED")
    # With the cookie and the page's CSRF token but another Origin: refused by the origin check.
    cookie = next(c["value"] for c in context.cookies() if c["name"] == "hutch_session")
    csrf = page.locator('meta[name="csrf-token"]').get_attribute("content")
    with httpx.Client(base_url=dev.url, cookies={"hutch_session": cookie}) as http:
        foreign = http.post(
            target.removeprefix(dev.url),
            json={"action": "terminate"},
            headers={"Origin": "http://evil.test", "X-CSRF-Token": csrf or ""},
        )
        assert foreign.status_code == 403, foreign.text
        tokenless = http.post(target.removeprefix(dev.url), json={"action": "terminate"}, headers={"Origin": dev.url})
        assert tokenless.status_code == 403, tokenless.text
        nobody = httpx.post(
            target, json={"action": "terminate"}, headers={"Origin": dev.url, "X-CSRF-Token": csrf or ""}
        )
        assert nobody.status_code == 401, nobody.text
    assert api.status("sleeper", iid) == "waiting"
    # The same request from the dashboard's own page goes through.
    page.goto(f"{dev.url}/ui/instance/sleeper/{iid}")
    page.click("[data-action=terminate]")
    expect(page.locator("#status .badge")).to_have_text("terminated", timeout=LIVE_S)


def test_pages_carry_a_csp_without_inline_scripts_and_assets_are_local(dev: Server) -> None:
    with httpx.Client(base_url=dev.url) as http:
        signin = http.get("/ui/signin")
        assert "script-src 'self'" in signin.headers["content-security-policy"]
        assert "unsafe-inline" not in signin.headers["content-security-policy"]
        assert "<script>" not in signin.text and "http" not in signin.text.split("<body>")[0]
        assert http.get("/ui/assets/common.js").status_code == 200
        assert "content-security-policy" not in http.get("/docs").headers  # /docs keeps its inline script


def test_phone_width_and_screenshots(chromium, dev: Server, api: Api, console) -> None:
    iid = unique("shot")
    api.create("gated", iid, {"order": "A-17", "items": 3})
    api.create("failing", unique("shot-f"))
    wide = chromium.new_context(viewport={"width": 1280, "height": 800})
    phone = chromium.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    try:
        for ctx in (wide, phone):
            ctx.on("page", console.watch)
        page = sign_in(wide, dev.url)
        expect(page.locator("#workflows tr[data-workflow=gated]")).to_be_visible()
        DOCS.mkdir(exist_ok=True)
        page.screenshot(path=str(DOCS / "dashboard-workflows.png"))
        page.goto(f"{dev.url}/ui/instances?workflow=gated")
        expect(page.locator("#instances tbody tr").first).to_be_visible()
        page.screenshot(path=str(DOCS / "dashboard-instances.png"))
        open_instance(page, dev.url, "gated", iid)
        expect(page.locator("#diagram .node").first).to_be_visible()
        page.screenshot(path=str(DOCS / "dashboard-instance.png"), full_page=True)
        small = sign_in(phone, dev.url)
        for path in ("/", "/ui/instances?workflow=gated", f"/ui/instance/gated/{iid}"):
            small.goto(f"{dev.url}{path}")
            small.wait_for_load_state("networkidle") if path != f"/ui/instance/gated/{iid}" else None
            overflow = small.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 1, f"{path} scrolls sideways by {overflow}px at phone width"
    finally:
        wide.close()
        phone.close()
    assert console.errors == [], console.errors


def test_open_dev_without_token_needs_no_sign_in_but_refuses_cross_site_posts(
    chromium, console, tmp_path: Path
) -> None:
    server = start_server(tmp_path / "open.log", "dev", *workflow_args(), "--no-access-log")
    try:
        api = Api(server.url, token=None)
        iid = unique("open")
        api.create("sleeper", iid)
        ctx = chromium.new_context()
        ctx.on("page", console.watch)
        try:
            page = ctx.new_page()
            page.goto(f"{server.url}/")
            expect(page.locator("#workflows tr[data-workflow=sleeper]")).to_be_visible()  # no sign-in
            evil = ctx.new_page()
            evil.route("http://evil.test/", lambda r: r.fulfill(content_type="text/html", body="<p>hi</p>"))
            evil.goto("http://evil.test/")
            status = evil.evaluate(
                """async (url) => (await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"},
                     body: JSON.stringify({action: "terminate"})}).catch(() => null))?.status ?? "blocked" """,
                f"{server.url}/ui/data/instance/sleeper/{iid}/action",
            )
            assert status == "blocked"  # CORS preflight fails: the browser never sends it
            refused = httpx.post(
                f"{server.url}/ui/data/instance/sleeper/{iid}/action",
                content=b'{"action": "terminate"}',
                headers={"Origin": "http://evil.test", "Content-Type": "text/plain"},
            )
            assert refused.status_code == 403, refused.text
            assert api.status("sleeper", iid) == "waiting"
        finally:
            ctx.close()
        api.http.close()
    finally:
        stop(server)
    # The refused cross-site fetch logs its refusal in the evil page's console, which is expected.
    console.allow("evil.test", "ERR_FAILED")
    assert console.errors == [], console.errors


def test_live_timeline_on_rabbitmq_and_redis(chromium, console, redis_url: str, amqp_url: str, tmp_path: Path) -> None:
    """The same live page on the distributed runtime: the follower re-reads ``seq``, not ``describe()``, each second."""

    namespace = unique("dash")
    env = clean_env(HUTCH_REDIS_URL=redis_url, HUTCH_AMQP_URL=amqp_url, HUTCH_NAMESPACE=namespace, HUTCH_PARTITIONS="2")
    try:
        server = start_server(
            tmp_path / "dev.log", "dev", *workflow_args(), "--no-access-log", "--token", TOKEN, env=env
        )
        try:
            api = Api(server.url)
            iid = unique("dist")
            api.create("gated", iid, {"html": "<script>window.pwned = 1</script>"})
            ctx = chromium.new_context()
            ctx.on("page", console.watch)
            try:
                page = sign_in(ctx, server.url)
                open_instance(page, server.url, "gated", iid)
                expect(page.locator("#status .badge")).to_have_text("waiting", timeout=LIVE_S)
                api.event("gated", iid, "go", {"ok": True})
                expect(page.locator("#timeline li[data-step=finish]")).to_have_attribute(
                    "data-state", "done", timeout=LIVE_S
                )
                expect(page.locator("#status .badge")).to_have_text("complete", timeout=LIVE_S)
                expect(page.locator("#diagram .node", has_text="finish")).to_have_attribute("data-state", "complete")
                assert page.evaluate("window.pwned") is None
            finally:
                ctx.close()
            api.http.close()
        finally:
            stop(server)
    finally:
        # Another thread: this one's event loop is Playwright's.
        with ThreadPoolExecutor(1) as thread:
            thread.submit(asyncio.run, drop_queues_and_namespace(amqp_url, namespace, [])).result()
    assert console.errors == [], console.errors
