"""The web dashboard ``hutch dev`` and ``hutch gateway`` serve at ``/`` (SPEC §13).

Pages (:mod:`.pages`): workflows with their counts and last hour's throughput at ``/``, instance
search at ``/ui/instances``, one instance at ``/ui/instance/<workflow>/<id>`` with its live
timeline, diagram and actions. Their data comes from ``/ui/data`` (:mod:`.data`) and, for the
live instance page, server-sent events at ``/ui/live`` (:mod:`.live`). Sign-in and the
cross-site request checks are in :mod:`.session`. Every asset is a file of this package
(``static/``), so the dashboard works with no internet access; nothing needs a build step.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from hutch.gateway.dashboard import data, pages
from hutch.gateway.dashboard.live import LiveInstances
from hutch.gateway.dashboard.session import Sessions

ASSETS_PATH = "/ui/assets"
ASSETS_DIR = Path(str(files("hutch.gateway.dashboard") / "static"))


def install_dashboard(app: FastAPI, *, live_poll_s: float = 1.0) -> None:
    """Serve the dashboard on ``app`` (built by :func:`hutch.gateway.app.create_app`, whose state it reads).

    Args:
        app: the gateway app; its ``state.client``, ``state.tokens`` and ``state.workflow_names`` are used.
        live_poll_s: how often a live page's instance is re-checked when nothing tells the gateway
            of its commits (a client with neither a worker of its own nor a commit feed; see
            :mod:`hutch.gateway.dashboard.live`).
    """
    client = app.state.client
    names = app.state.workflow_names
    app.state.dashboard_sessions = Sessions()

    async def snapshot(workflow: str, instance_id: str) -> dict[str, object]:
        return await data.instance_snapshot(client, names, workflow, instance_id)

    hub = app.state.dashboard_live = LiveInstances(client, snapshot, poll_s=live_poll_s)
    app.router.on_shutdown.append(hub.close)
    # follow_symlink: the strict editable install links each file to the source tree.
    app.mount(ASSETS_PATH, StaticFiles(directory=ASSETS_DIR, follow_symlink=True), name="dashboard-assets")
    app.include_router(pages.router)
    app.include_router(data.router)


__all__ = ["ASSETS_PATH", "LiveInstances", "Sessions", "install_dashboard"]
