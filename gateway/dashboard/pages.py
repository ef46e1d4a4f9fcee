"""The dashboard's pages (``/``, ``/ui/instances``, ``/ui/instance/...``) and its sign-in.

A page is a static HTML file of this package (its ``<main>``, put in the one ``layout.html`` with
the ``header.html`` of signed-in pages) plus one script file of its own: the scripts
fetch ``/ui/data`` and put every value from an instance (ids, params, outputs, errors, event
payloads) into the page as text (``textContent``), never as markup. The only thing filled in
on the server is the session's CSRF token, which is hex. Every page is sent with a
content-security policy that runs only the gateway's own script files.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from hutch.gateway.dashboard.data import sessions
from hutch.gateway.dashboard.session import CONTENT_SECURITY_POLICY, CsrfRefused, Sessions, check_same_origin

MAX_SIGNIN_BODY = 4096
WRONG_TOKEN = "That token is not one of this gateway's API tokens."
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

router = APIRouter(include_in_schema=False)


@dataclass(frozen=True)
class _Page:
    title: str
    script: str
    nav: str | None  # which link of the header is the current page ("" none); None: no header (sign-in)


_PAGES = {
    "workflows.html": _Page("Workflows", "workflows.js", "workflows"),
    "instances.html": _Page("Instances", "instances.js", "instances"),
    "instance.html": _Page("Instance", "instance.js", ""),
    "signin.html": _Page("Sign in", "signin.js", None),
}


def _file(name: str) -> str:
    return (files("hutch.gateway.dashboard") / "pages" / name).read_text("utf-8")


@cache
def _template(name: str) -> str:
    """A page: its body in the one layout (head, and the header of signed-in pages); %CSRF% and %MESSAGE% left."""
    spec = _PAGES[name]
    header = ""
    if spec.nav is not None:
        header = _file("header.html")
        for link in ("workflows", "instances"):
            current = ' aria-current="page"' if link == spec.nav else ""
            header = header.replace(f"%CURRENT_{link.upper()}%", current)
    return (
        _file("layout.html")
        .replace("%TITLE%", spec.title)
        .replace("%SCRIPT%", spec.script)
        .replace("%HEADER%", header)
        .replace("%BODY%", _file(name))
    )


def _page(name: str, csrf: str = "", *, message: str = "", status_code: int = 200) -> HTMLResponse:
    html = _template(name).replace("%CSRF%", csrf).replace("%MESSAGE%", message)
    return HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)


def _guarded(request: Request, s: Sessions, name: str) -> Response:
    session = s.session(request)
    if session is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/ui/signin?next={quote(target, safe='')}", status_code=303)
    return _page(name, s.csrf_token(session))


@router.get("/")
async def workflows_page(request: Request, s: Sessions = Depends(sessions)) -> Response:
    """The workflows page: counts by status and the last hour's throughput."""
    return _guarded(request, s, "workflows.html")


@router.get("/ui/instances")
async def instances_page(request: Request, s: Sessions = Depends(sessions)) -> Response:
    """The instance search page."""
    return _guarded(request, s, "instances.html")


@router.get("/ui/instance/{workflow}/{instance_id}")
async def instance_page(request: Request, s: Sessions = Depends(sessions)) -> Response:
    """One instance: its detail, live timeline, diagram and actions."""
    return _guarded(request, s, "instance.html")


@router.get("/ui/signin")
async def signin_page(request: Request, s: Sessions = Depends(sessions)) -> Response:
    """The sign-in form (straight to the dashboard when already signed in, or when it is open)."""
    if s.session(request) is not None:
        return RedirectResponse(_next(request.query_params.get("next")), status_code=303)
    failed = "failed" in request.query_params
    return _page("signin.html", message=WRONG_TOKEN if failed else "")


@router.post("/ui/signin")
async def signin(request: Request, s: Sessions = Depends(sessions)) -> Response:
    """Check the token from the form; on success keep it in the session cookie and go on to ``next``."""
    check_same_origin(request)
    body = (await request.body())[:MAX_SIGNIN_BODY].decode("utf-8", "replace")
    form = parse_qs(body)
    token = (form.get("token") or [""])[0].strip()
    target = _next((form.get("next") or [""])[0])
    response = RedirectResponse(target, status_code=303)
    if not s.sign_in(request, response, token):
        return RedirectResponse(f"/ui/signin?failed=1&next={quote(target, safe='')}", status_code=303)
    return response


@router.post("/ui/signout")
async def signout(request: Request, s: Sessions = Depends(sessions)) -> Response:
    """Forget the session cookie (a same-origin form post with the CSRF token)."""
    session = s.require(request)
    check_same_origin(request)
    form = parse_qs((await request.body())[:MAX_SIGNIN_BODY].decode("utf-8", "replace"))
    if (form.get("csrf") or [""])[0] != s.csrf_token(session):
        raise CsrfRefused("missing or wrong CSRF token: reload the dashboard page and try again")
    response = RedirectResponse("/ui/signin", status_code=303)
    s.sign_out(request, response)
    return response


def _next(target: str | None) -> str:
    """Where to go after signing in: a path of this gateway only (never another site)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target
