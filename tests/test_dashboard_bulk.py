"""The dashboard's bulk job endpoints: cancel, the progress stream, and the cross-site checks of their POSTs.

In process (the app over an embedded runtime) with a signed-in session, so that a job can be left
unrun: this client starts no bulk runner until it creates a job itself, so a job recorded directly
stays where it is until the test cancels it. The browser tests (tests/browser) drive the same
endpoints from the page against ``hutch dev``.
"""

from __future__ import annotations

import re

import httpx
from hutch.bulk import BulkJobs
from hutch.search import SearchFilter

from tests.test_gateway_api import TOKEN, in_process

ORIGIN = "http://gateway"


async def test_cancel_and_progress_stream_of_a_bulk_job_behind_the_csrf_and_origin_checks() -> None:
    async with in_process() as (http, client, _):
        signed = await http.post("/ui/signin", content=f"token={TOKEN}&next=/ui/instances", headers={"Origin": ORIGIN})
        assert signed.status_code == 303 and "hutch_session" in signed.cookies, signed.text
        page = await http.get("/ui/instances")
        found = re.search(r'name="csrf-token" content="([0-9a-f]{64})"', page.text)
        assert found is not None, page.text[:500]
        csrf = found.group(1)
        job_id = await BulkJobs(client._store).create("terminate", SearchFilter(workflow="sleeper"), 0)
        cancel = f"/ui/data/bulk/{job_id}/cancel"

        refused = [
            await http.post(cancel, headers={"Origin": ORIGIN}),  # no CSRF token
            await http.post(cancel, headers={"Origin": "http://evil.test", "X-CSRF-Token": csrf}),  # another site
            await http.post("/ui/data/bulk", json={"action": "terminate"}, headers={"Origin": ORIGIN}),
        ]
        assert [r.status_code for r in refused] == [403, 403, 403], [r.text for r in refused]
        async with httpx.AsyncClient(transport=http._transport, base_url=ORIGIN) as stranger:  # no session
            unsigned = await stranger.post(cancel, headers={"Origin": ORIGIN, "X-CSRF-Token": csrf})
            assert unsigned.status_code == 401, unsigned.text
        assert (await client.bulk_job(job_id).progress()).state == "collecting", "nothing was cancelled"

        cancelled = await http.post(cancel, headers={"Origin": ORIGIN, "X-CSRF-Token": csrf})
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["result"]["state"] == "cancelled"
        # The progress stream of an ended job: its progress once, then the end.
        stream = await http.get(f"/ui/data/bulk/{job_id}/live")
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = [line.removeprefix("event: ") for line in stream.text.splitlines() if line.startswith("event: ")]
        assert events == ["progress", "end"], stream.text
        assert '"state":"cancelled"' in stream.text
        assert (await http.get("/ui/data/bulk/no-such-job/live")).status_code == 404
