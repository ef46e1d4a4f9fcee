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


def search(page: Page, **fields: str) -> None:
    """Set the filters given (the others as they are) and search."""
    for name, value in fields.items():
        if page.locator(f"#{name}").evaluate("e => e.tagName") == "SELECT":
            page.select_option(f"#{name}", value)
        else:
            page.fill(f"#{name}", value)
    page.click("#filters button[type=submit]")


def local_input(page: Page, iso: str) -> str:
    """An ISO instant as a datetime-local input's value in the browser's time zone (to the millisecond)."""
    value: str = page.evaluate(
        "iso => { const d = new Date(iso); "
        "return new Date(d - d.getTimezoneOffset() * 60000).toISOString().slice(0, 23); }",
        iso,
    )
    return value


def shown_ids(page: Page) -> list[str]:
    return [row.get_attribute("data-id") or "" for row in page.locator("#instances tbody tr").all()]


def test_search_by_every_filter_and_page_by_cursor(page: Page, api: Api, dev: Server) -> None:
    prefix = unique("srch")
    ids = [f"{prefix}-{n:02d}" for n in range(12)]
    for iid in ids:
        api.create("sleeper", iid)
    failing = f"{prefix}-f"
    api.create("failing", failing)
    rows = page.locator("#instances tbody tr")
    # Every workflow (the default) with an id prefix: both workflows' instances, newest first.
    page.goto(f"{dev.url}/ui/instances")
    expect(page.locator("#workflow")).to_have_value("")
    search(page, id_prefix=prefix)
    expect(rows).to_have_count(13)
    assert shown_ids(page) == [failing, *reversed(ids)]
    expect(page.locator(f"#instances tbody tr[data-id='{failing}']")).to_have_attribute("data-workflow", "failing")
    # One workflow, a page of 10 at a time: the cursor gives the next page, then there is no more.
    search(page, workflow="sleeper", limit="10")
    expect(rows).to_have_count(10)
    assert shown_ids(page) == list(reversed(ids))[:10]
    expect(page.locator("#summary")).to_have_text("10 shown; more may match.")
    page.click("#more")
    expect(rows).to_have_count(12)
    assert shown_ids(page) == list(reversed(ids))
    expect(page.locator("#more")).to_be_hidden()
    # Oldest first.
    search(page, order="oldest")
    expect(rows.first).to_have_attribute("data-id", ids[0])
    page.click("#more")
    expect(rows).to_have_count(12)
    assert shown_ids(page) == ids
    # The creation time range: from the 4th (included) to the 7th (excluded).
    listed = api.http.get("/api/instances", params={"workflow": "sleeper", "id_prefix": prefix, "order": "asc"})
    created = [str(row["created_on"]) for row in listed.json()["result"]]
    assert len(created) == 12 and len(set(created)) == 12, created
    search(page, since=local_input(page, created[3]), until=local_input(page, created[6]))
    expect(rows).to_have_count(3)
    assert shown_ids(page) == ids[3:6]
    search(page, since="", until="", order="newest", limit="50")
    expect(rows).to_have_count(12)
    # The code version the instances started on.
    version = str(poll(lambda: api.describe("sleeper", ids[0])["version"], timeout=15.0))
    search(page, version=version)
    expect(rows).to_have_count(12)
    search(page, version="no-such-version")
    expect(rows).to_have_count(0)
    # A status: the failing workflow's instance ends errored; the sleepers wait.
    poll(lambda: api.status("failing", failing) == "errored", timeout=15.0)
    search(page, version="", workflow="failing", status="errored")
    expect(rows).to_have_count(1)
    assert shown_ids(page) == [failing]
    search(page, status="complete")
    expect(page.locator("#summary")).to_have_text("No instance matches.")
    search(page, workflow="sleeper", status="waiting")
    expect(rows).to_have_count(12)
    # The filters are kept in the address, so a reload shows the same search.
    page.reload()
    expect(page.locator("#status")).to_have_value("waiting")
    expect(rows).to_have_count(12)


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


def test_bulk_terminate_of_the_matches_runs_as_a_durable_job_with_its_progress(
    page: Page, api: Api, dev: Server
) -> None:
    prefix = unique("bulk")
    ids = [f"{prefix}-{n}" for n in range(6)]
    for iid in ids:
        api.create("sleeper", iid)
    other = unique("keep")
    api.create("sleeper", other)
    page.goto(f"{dev.url}/ui/instances?workflow=sleeper&id_prefix={prefix}")
    expect(page.locator("#instances tbody tr")).to_have_count(6)
    expect(page.locator("#bulk-job")).to_be_hidden()  # no job yet
    page.fill("#id_prefix", "changed-but-not-searched")  # the job acts on the search shown, not the form
    page.select_option("#bulk-action", "terminate")
    page.click("#bulk-matching")
    job = page.locator("#bulk-job")
    expect(job).to_have_attribute("data-state", "done", timeout=LIVE_S)
    expect(page.locator("#bulk-status")).to_have_text("terminate done: 6 of 6 done, 0 failed")
    expect(page.locator("#bulk-progress")).to_have_attribute("value", "6")
    expect(page.locator("#bulk-cancel")).to_be_hidden()
    # A durable job of the server's, over the filter: its record is there for the REST API too.
    progress = api.http.get(f"/api/bulk/{job.get_attribute('data-job')}").json()["result"]
    assert progress["action"] == "terminate" and progress["state"] == "done", progress
    assert {k: v for k, v in progress["filter"].items() if v} == {"workflow": "sleeper", "id_prefix": prefix}
    assert (progress["total"], progress["done"], progress["failed"]) == (6, 6, 0), progress
    assert {api.status("sleeper", iid) for iid in ids} == {"terminated"}
    assert api.status("sleeper", other) == "waiting"
    # Once it ended, the search shown ran again (not the form's edit): its rows show what the job did.
    expect(page.locator("#instances tbody td[data-status=terminated]")).to_have_count(6, timeout=LIVE_S)
    expect(page.locator("#instances tbody tr")).to_have_count(6)


def test_bulk_pause_of_the_selected_instances_is_a_job_over_them(page: Page, api: Api, dev: Server) -> None:
    prefix = unique("sel")
    ids = [f"{prefix}-{n}" for n in range(3)]
    for iid in ids:
        api.create("sleeper", iid)
    for iid in ids:
        poll(lambda iid=iid: api.status("sleeper", iid) == "waiting", timeout=15.0)  # type: ignore[misc]
    page.goto(f"{dev.url}/ui/instances?workflow=sleeper&id_prefix={prefix}")
    expect(page.locator("#instances tbody tr")).to_have_count(3)
    expect(page.locator("#bulk-selected")).to_be_disabled()
    for iid in ids[:2]:
        page.check(f"#instances tbody tr[data-id='{iid}'] input[type=checkbox]")
    expect(page.locator("#selected-count")).to_have_text("2")
    page.select_option("#bulk-action", "pause")
    page.click("#bulk-selected")
    job = page.locator("#bulk-job")
    expect(job).to_have_attribute("data-state", "done", timeout=LIVE_S)
    expect(page.locator("#bulk-status")).to_have_text("pause done: 2 of 2 done, 0 failed")
    progress = api.http.get(f"/api/bulk/{job.get_attribute('data-job')}").json()["result"]
    assert (progress["action"], progress["total"], progress["done"]) == ("pause", 2, 2), progress
    poll(lambda: [api.status("sleeper", iid) for iid in ids] == ["paused", "paused", "waiting"], timeout=15.0)
    # Every workflow shown: instances of several workflows cannot be one selection job.
    page.goto(f"{dev.url}/ui/instances?id_prefix={prefix}")
    expect(page.locator("#instances tbody tr")).to_have_count(3)
    page.check("#select-all")
    expect(page.locator("#bulk-selected")).to_be_disabled()


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
