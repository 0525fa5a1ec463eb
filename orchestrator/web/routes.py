"""The web UI's pages and actions.

Pages are plain GETs rendered on the server (FastAPI runs them on its thread pool, since
they read the store and may ask a metric source). Actions are POST forms: each is checked
for its CSRF token and its operator before anything changes, then answers with a redirect
(303) and a one-shot message. A rollback runs its Prefect flow on the server's event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import jinja2
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles

from orchestrator import flows
from orchestrator.config import UnknownPipeline
from orchestrator.runner import Runner
from orchestrator.runtime import Ship
from orchestrator.untrusted import CLOSE, BodyReader, BodyRefused, release_number
from orchestrator.web import charts, views
from orchestrator.web.auth import CSRF_FIELD, FLASH_COOKIE, Guard, Refused

HERE = Path(__file__).parent
STATIC_PATH = "/static/ship"
# How long a rollback request waits for the flow before answering "started" (real seconds);
# the pipeline page shows a rollback that is still running.
ROLLBACK_WAIT_S = 15.0
FORM_LIMIT = 16_384  # bytes: our forms are a few short fields
FORMS_AT_ONCE = 8  # form bodies read at once: at most 8 × 16 KiB held unverified
# Pages use only what ship serves, are never framed, and post only to ship.
HEADERS = {
    "cache-control": "no-store",
    "content-security-policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "x-content-type-options": "nosniff",
}
log = logging.getLogger("ship.web")


class NotFound(Exception):
    pass


class BadInput(Refused):
    status = 400


class TooLarge(Exception):
    """A form body refused unread (413, 408 or 503): answered as plain text, and the
    connection closed so the client stops sending."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class WebUi:
    def __init__(self, ship: Ship, runner: Runner) -> None:
        self.ship = ship
        self.runner = runner
        self.guard = Guard(ship.config.ui, ship.env)
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
            undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        self.templates.filters.update(when=_when, ago=self._ago, duration=charts.duration,
                                      link=_link, minutes=_minutes, percent=_percent)
        self.templates.globals.update(static=STATIC_PATH, csrf_field=CSRF_FIELD, quote=quote,
                                      stages=views.TIMELINE)
        self._rollbacks: set[asyncio.Task] = set()
        self.forms = BodyReader(FORM_LIMIT, FORMS_AT_ONCE)

    # --- rendering --------------------------------------------------------------------------

    def render(self, request: Request, template: str, status: int = 200,
               **context: Any) -> HTMLResponse:
        nonce, new = self.guard.csrf_nonce(request)
        flash = self.guard.flash(request)
        body = self.templates.get_template(template).render(
            viewer=self.guard.viewer(request), csrf=nonce, flash=flash, path=request.url.path,
            auth=self.ship.config.ui.auth, now=self.ship.clock.now(), **context)
        response = HTMLResponse(body, status_code=status, headers=HEADERS)
        if FLASH_COOKIE in request.cookies:
            self.guard.clear_flash(response)
        if new:
            self.guard.set_csrf(request, response, nonce)
        return response

    def _ago(self, when: datetime | None) -> str:
        if when is None:
            return ""
        return charts.duration(max(0.0, (self.ship.clock.now() - when).total_seconds())) + " ago"

    def pipeline_name(self, name: str) -> str:
        try:
            return self.ship.config.pipeline(name).name
        except UnknownPipeline as error:
            raise NotFound(str(error.args[0])) from None

    # --- pages --------------------------------------------------------------------------------

    def overview(self, request: Request) -> HTMLResponse:
        now = self.ship.clock.now()
        pipelines = [views.pipeline_view(self.ship, name, views.RELEASES_ON_OVERVIEW, now)
                     for name in self.ship.config.pipelines]
        return self.render(request, "overview.html", title="Pipelines", views=pipelines,
                           refresh=any(p.busy for p in pipelines))

    def pipeline(self, request: Request, name: str) -> HTMLResponse:
        name = self.pipeline_name(name)
        now = self.ship.clock.now()
        view = views.pipeline_view(self.ship, name, views.RELEASES_ON_PIPELINE, now)
        return self.render(request, "pipeline.html", title=f"{name} pipeline", view=view,
                           locks=self.ship.store.locks(name, limit=10),
                           rollbacks=views.rollback_rows(self.ship.store, name),
                           dora=views.dora_view(self.ship, name, now), refresh=view.busy)

    def release(self, request: Request, name: str, number: str) -> HTMLResponse:
        name = self.pipeline_name(name)
        try:
            release = self.ship.store.release_by_number(name, release_number(number))
        except ValueError as error:
            raise NotFound(f"{name} has no such release ({error})") from None
        if release is None:
            raise NotFound(f"{name} has no release #{number}")
        page = views.release_page(self.ship, name, release, self.ship.clock.now())
        return self.render(request, "release.html", title=release.name, page=page,
                           refresh=page.pipeline.busy)

    def dora(self, request: Request) -> HTMLResponse:
        now = self.ship.clock.now()
        return self.render(request, "dora.html", title="DORA", views=[
            views.dora_view(self.ship, name, now) for name in self.ship.config.pipelines])

    def login_page(self, request: Request) -> HTMLResponse:
        return self.render(request, "login.html", title="Log in",
                           next=_local(request.query_params.get("next")))

    # --- actions ------------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        form = await _form(request, self.forms)
        if not self.guard.csrf_ok(request, form):
            return self.refuse(request, "the form's CSRF token is missing or does not match: "
                               "reload the page and try again")
        try:
            session = self.guard.open_session(form.get("name", "").strip(),
                                              form.get("token", ""))
        except Refused as refusal:
            return self.render(request, "login.html", status=403, title="Log in",
                               next=_local(form.get("next")), error=str(refusal))
        response = self.redirect(request, _local(form.get("next")),
                                 f"logged in as {form.get('name', '').strip()}", True)
        self.guard.set_session(request, response, session)
        return response

    async def logout(self, request: Request) -> Response:
        form = await _form(request, self.forms)
        if not self.guard.csrf_ok(request, form):
            return self.refuse(request, "the form's CSRF token is missing or does not match")
        response = self.redirect(request, "/", "logged out", True)
        self.guard.set_session(request, response, None)
        return response

    async def act(self, request: Request, name: str,
                  action: Callable[[str, str, dict[str, str]], Awaitable[tuple[str, bool]]],
                  ) -> Response:
        """Check the CSRF token and the operator, then act and say how it went."""
        form = await _form(request, self.forms)
        try:
            name = self.pipeline_name(name)
            actor = self.guard.operator(request, form)
            text, ok = await action(name, actor, form)
        except Refused as refusal:
            return self.refuse(request, str(refusal), refusal.status)
        return self.redirect(request, _local(form.get("back"), f"/pipelines/{name}"), text, ok)

    async def lock(self, name: str, actor: str, form: dict[str, str]) -> tuple[str, bool]:
        reason = _required(form, "reason")
        claim = await asyncio.to_thread(self.ship.store.take_lock, name, actor, reason)
        if not claim.won:
            return f"{name} is already {claim.reason}", False
        await asyncio.to_thread(self.ship.pipeline(name).notify, "lock",
                                f"{name} {claim.lock.describe()}", actor=actor)
        return f"🔒 {name} {claim.lock.describe()}", True

    async def unlock(self, name: str, actor: str, form: dict[str, str]) -> tuple[str, bool]:
        reason = _required(form, "reason")
        lock = await asyncio.to_thread(self.ship.store.unlock, name, actor, reason)
        if lock is None:
            return f"{name} is not locked", False
        await asyncio.to_thread(self.ship.pipeline(name).notify, "unlock",
                                f"{name} unlocked by {actor}: {reason}", actor=actor)
        self.runner.kick(name, actor=actor)  # merges queued while locked may ship now
        return f"🔓 {name} unlocked (was {lock.describe()})", True

    async def rollback(self, name: str, actor: str, form: dict[str, str]) -> tuple[str, bool]:
        """Roll back to the chosen release and lock. The flow runs on this event loop, as
        a task of its own, so a slow fleet never ends it when the request is answered."""
        if not form.get("to", "").strip():
            raise BadInput("choose the release to roll back to")
        try:
            to = release_number(form["to"], "to")
        except ValueError as error:
            raise BadInput(f"choose the release to roll back to ({error})") from None
        reason = form.get("reason", "").strip() or f"rollback from the web UI by {actor}"
        work = asyncio.ensure_future(self.runner.rollback(name, actor, reason, to_number=to))
        self._rollbacks.add(work)
        work.add_done_callback(self._rollback_ended)
        done, _ = await asyncio.wait({work}, timeout=ROLLBACK_WAIT_S)
        if not done:
            return (f"rollback to {name}#{to} started by {actor}; {name} is locked. The "
                    "pipeline shows its progress.", True)
        outcome: flows.RollbackOutcome = work.result()
        if outcome.won:
            return f"⏪ {outcome.reason}; {name} is locked (unlock it when it is safe)", True
        return f"rollback refused: {outcome.reason}", False

    def _rollback_ended(self, work: asyncio.Task) -> None:
        self._rollbacks.discard(work)
        if not work.cancelled() and work.exception() is not None:
            log.error("rollback from the web UI failed: %r", work.exception())

    # --- answers --------------------------------------------------------------------------

    def redirect(self, request: Request, to: str, text: str, ok: bool) -> Response:
        response = RedirectResponse(to, status_code=303)
        self.guard.set_flash(request, response, text, ok)
        return response

    def refuse(self, request: Request, why: str, status: int = 403) -> Response:
        title = "Refused" if status == 403 else "Not done"
        return self.render(request, "refused.html", status=status, title=title, why=why)

    def too_large(self, request: Request, error: TooLarge) -> Response:
        return PlainTextResponse(str(error), status_code=error.status,
                                 headers={**HEADERS, **CLOSE})

    def not_found(self, request: Request, error: NotFound) -> Response:
        return self.render(request, "refused.html", status=404, title="Not found",
                           why=str(error))


def mount(app: FastAPI, ship: Ship, runner: Runner) -> WebUi:
    ui = WebUi(ship, runner)
    for name in ship.config.pipelines:
        ship.pipeline(name)  # build every runtime now, never from two requests at once
    app.mount(STATIC_PATH, StaticFiles(directory=HERE / "static"), name="ship-static")
    app.add_exception_handler(NotFound, ui.not_found)  # type: ignore[arg-type]
    app.add_exception_handler(TooLarge, ui.too_large)  # type: ignore[arg-type]
    html = {"response_class": HTMLResponse, "include_in_schema": False}
    app.add_api_route("/", ui.overview, methods=["GET"], **html)
    app.add_api_route("/dora", ui.dora, methods=["GET"], **html)
    app.add_api_route("/login", ui.login_page, methods=["GET"], **html)
    app.add_api_route("/login", ui.login, methods=["POST"], **html)
    app.add_api_route("/logout", ui.logout, methods=["POST"], **html)
    app.add_api_route("/pipelines/{name}", ui.pipeline, methods=["GET"], **html)
    app.add_api_route("/pipelines/{name}/releases/{number}", ui.release, methods=["GET"],
                      **html)
    for verb, action in (("lock", ui.lock), ("unlock", ui.unlock), ("rollback", ui.rollback)):
        app.add_api_route(f"/pipelines/{{name}}/{verb}", _acting(ui, action),
                          methods=["POST"], **html)
    return ui


def _acting(ui: WebUi, action: Callable[..., Awaitable[tuple[str, bool]]],
            ) -> Callable[[Request, str], Awaitable[Response]]:
    async def endpoint(request: Request, name: str) -> Response:
        return await ui.act(request, name, action)

    endpoint.__name__ = f"ui_{action.__name__}"
    return endpoint


# --- helpers -----------------------------------------------------------------------------------


async def _form(request: Request, reader: BodyReader) -> dict[str, str]:
    """A urlencoded form's fields (the first value of each); anything else reads as empty,
    which fails the CSRF check. A body past FORM_LIMIT is refused (TooLarge) as it arrives."""
    if not request.headers.get("content-type", "").startswith(
            "application/x-www-form-urlencoded"):
        return {}
    try:
        body = await reader.read(request)
    except BodyRefused as refused:
        raise TooLarge(str(refused), refused.status) from None
    fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True,
                      max_num_fields=32)
    return {key: values[0] for key, values in fields.items()}


def _required(form: dict[str, str], field: str) -> str:
    value = form.get(field, "").strip()
    if not value:
        raise BadInput(f"a {field} is required")
    return value[:500]


def _local(path: str | None, default: str = "/") -> str:
    """Only a path on this site, never another host (an open redirect)."""
    if path and path.startswith("/") and not path.startswith("//") and "\\" not in path:
        return path
    return default


def _when(when: datetime | None) -> str:
    return "" if when is None else f"{when:%Y-%m-%d %H:%M:%S} UTC"


def _link(url: str) -> str:
    """Only http(s) links are clickable: a gate's link is data from outside."""
    return url if url.startswith(("https://", "http://")) else "#"


def _minutes(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f} min"


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"
