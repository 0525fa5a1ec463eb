"""The web UI of `ship serve`: an overview of every pipeline, a page per release, DORA
figures, and the operator's actions (roll back, lock, unlock) as CSRF-protected forms.

Server-rendered HTML with inline SVG charts; it works without JavaScript, and its one small
script and its stylesheet are served from this package. Who may act is set in the `ui:`
section of pipelines.yaml (see orchestrator.config.Ui).
"""

from __future__ import annotations

from fastapi import FastAPI

from orchestrator.runner import Runner
from orchestrator.runtime import Ship


def mount_ui(app: FastAPI, ship: Ship, runner: Runner) -> None:
    """Add the UI's routes (`/`, `/dora`, `/login`, `/logout`, `/pipelines/...`) and its
    static files (`/static/ship/`) to `app`. Rollbacks run `runner`'s flows on the server's
    event loop against `ship`, which must be the world flows run in (`runtime.use(ship)`)."""
    from orchestrator.web.routes import mount

    mount(app, ship, runner)


__all__ = ["mount_ui"]
