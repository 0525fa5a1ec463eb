"""Actions over real HTTP: only an authenticated operator with the page's CSRF token may
lock, unlock or roll back; every other POST is refused and changes nothing."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from orchestrator.notify import Notice
from orchestrator.release import State
from orchestrator.runtime import Ship
from orchestrator.store import Store
from orchestrator.web.auth import CSRF_COOKIE, SESSION_COOKIE
from shiptypes import Commit
from tests.web.conftest import ENV, TOKEN, Served, SetClock, serving, sim_config, write_history


def _ship(tmp_path: Path, ui: dict[str, Any], env: dict[str, str] | None = None) -> Ship:
    now = datetime.now(UTC).replace(microsecond=0)
    clock = SetClock(now)
    store = Store(f"sqlite:///{tmp_path}/ship.db", clock)
    write_history(store, clock, now)  # us: r5 live, r3 and r1 fit to roll back to
    return Ship(sim_config(ui), store, clock, notifiers=[Told()],
                env=ENV if env is None else env)


class Told:
    """A notifier that keeps what it was told."""

    name = "told"

    def __init__(self) -> None:
        self.notices: list[Notice] = []

    def notify(self, notice: Notice) -> None:
        self.notices.append(notice)


def told(served: Served) -> list[tuple[str, str]]:
    [notifier] = served.ship.pipeline("us").broadcast.notifiers
    return [(n.kind, n.actor) for n in notifier.notices]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with serving(_ship(tmp_path, {"auth": "token"})) as running:
        yield running


def csrf_of(page: str) -> str:
    found = re.search(r'<meta name="csrf-token" content="([^"]+)">', page)
    assert found, "the page carries no CSRF token"
    return found.group(1)


def set_cookies(answer: requests.Response) -> dict[str, str]:
    """Each cookie the answer sets, by name, with its attributes."""
    return {header.split("=", 1)[0]: header for header in answer.raw.headers.getlist("set-cookie")}


def fresh(served: Served) -> tuple[requests.Session, str]:
    """A browser-like client that has loaded a page, and the page's CSRF token."""
    client = requests.Session()
    page = client.get(served.url + "/login", timeout=10)
    return client, csrf_of(page.text)


def log_in(served: Served, name: str = "alice", token: str = TOKEN,
           ) -> tuple[requests.Session, str, requests.Response]:
    client, csrf = fresh(served)
    answer = client.post(served.url + "/login", data={"csrf": csrf, "name": name,
                                                      "token": token, "next": "/pipelines/us"},
                         allow_redirects=False, timeout=10)
    return client, csrf, answer


def snapshot(store: Store) -> tuple:
    state = store.pipeline_state("us")
    return (state.live.id, state.lock, len(store.rollbacks("us")), len(store.locks("us")),
            [e.id for e in store.events("us", limit=1000)],
            [r.state for r in store.releases("us")])


ACTIONS = [("lock", {"reason": "freeze"}), ("unlock", {"reason": "thaw"}),
           ("rollback", {"to": "3", "reason": "bad"})]


def test_pages_are_readable_by_anyone_and_set_a_strict_csrf_cookie(served: Served) -> None:
    answer = requests.get(served.url + "/", timeout=10)
    assert answer.status_code == 200 and "us#5" in answer.text
    cookie = set_cookies(answer)[CSRF_COOKIE]
    assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower()
    assert 'action="/pipelines/us/lock"' not in answer.text  # no forms for a reader
    assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
    assert answer.headers["x-frame-options"] == "DENY"
    assert 'href="/login?next=/"' in answer.text


@pytest.mark.parametrize(("action", "fields"), ACTIONS)
def test_a_post_without_logging_in_is_refused_and_changes_nothing(
        served: Served, action: str, fields: dict[str, str]) -> None:
    client, csrf = fresh(served)
    before = snapshot(served.store)
    answer = client.post(f"{served.url}/pipelines/us/{action}", data={"csrf": csrf, **fields},
                         allow_redirects=False, timeout=10)
    assert answer.status_code == 403
    assert "only an operator may do this: log in to act" in answer.text
    assert snapshot(served.store) == before and told(served) == []


@pytest.mark.parametrize(("action", "fields"), ACTIONS)
def test_an_operators_post_without_the_csrf_token_is_refused(
        served: Served, action: str, fields: dict[str, str]) -> None:
    client, csrf, _ = log_in(served)
    foreign = fresh(served)[1]  # a valid token, but of another browser
    before = snapshot(served.store)
    url = f"{served.url}/pipelines/us/{action}"
    for data in (fields, {**fields, "csrf": ""}, {**fields, "csrf": foreign}):
        answer = client.post(url, data=data, allow_redirects=False, timeout=10)
        assert answer.status_code == 403 and "CSRF" in answer.text
    # A JSON body carries no form fields, so no token either.
    answer = client.post(url, json={"csrf": csrf, **fields}, allow_redirects=False, timeout=10)
    assert answer.status_code == 403
    # The field without the cookie, as a forged cross-site form would send it.
    bare = requests.post(url, data={"csrf": csrf, **fields},
                         cookies={SESSION_COOKIE: client.cookies[SESSION_COOKIE]},
                         allow_redirects=False, timeout=10)
    assert bare.status_code == 403
    # A cookie made up by hand, matching the field, is not signed.
    forged = requests.post(url, data={"csrf": "made-up", **fields},
                           cookies={SESSION_COOKIE: client.cookies[SESSION_COOKIE],
                                    CSRF_COOKIE: "made-up.c2lnbmF0dXJl"},
                           allow_redirects=False, timeout=10)
    assert forged.status_code == 403
    assert snapshot(served.store) == before


def test_logging_in_needs_the_token_and_sets_a_strict_http_only_session(served: Served) -> None:
    client, _, wrong = log_in(served, token="guess")
    assert wrong.status_code == 403 and "wrong token" in wrong.text
    assert SESSION_COOKIE not in client.cookies
    client, _, right = log_in(served)
    assert right.status_code == 303 and right.headers["location"] == "/pipelines/us"
    session = set_cookies(right)[SESSION_COOKIE]
    assert "HttpOnly" in session and "samesite=strict" in session.lower()
    page = client.get(served.url + "/pipelines/us", timeout=10).text
    assert '<span id="operator">alice</span>' in page and "logged in as alice" in page
    assert 'action="/pipelines/us/lock"' in page and 'action="/pipelines/us/rollback"' in page


def test_login_goes_back_only_to_a_page_of_this_site(served: Served) -> None:
    client, csrf = fresh(served)
    answer = client.post(served.url + "/login", data={
        "csrf": csrf, "name": "alice", "token": TOKEN, "next": "//evil.example/"},
        allow_redirects=False, timeout=10)
    assert answer.status_code == 303 and answer.headers["location"] == "/"


def test_a_tampered_session_is_no_operator(served: Served) -> None:
    client, csrf, _ = log_in(served)
    value = client.cookies[SESSION_COOKIE]
    payload, _, mac = value.rpartition(".")
    other = payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB")
    client.cookies.set(SESSION_COOKIE, f"{other}.{mac}")
    before = snapshot(served.store)
    answer = client.post(served.url + "/pipelines/us/lock", data={"csrf": csrf,
                                                                  "reason": "x"},
                         allow_redirects=False, timeout=10)
    assert answer.status_code == 403 and snapshot(served.store) == before


def test_an_operator_locks_and_unlocks_with_a_reason(served: Served) -> None:
    client, csrf, _ = log_in(served)
    url = served.url + "/pipelines/us"
    before = snapshot(served.store)
    answer = client.post(url + "/lock", data={"csrf": csrf, "reason": "  "},
                         allow_redirects=False, timeout=10)
    assert answer.status_code == 400 and "a reason is required" in answer.text
    assert snapshot(served.store) == before

    answer = client.post(url + "/lock", data={"csrf": csrf, "reason": "release freeze",
                                              "back": "/"}, allow_redirects=False, timeout=10)
    assert answer.status_code == 303 and answer.headers["location"] == "/"
    lock = served.store.pipeline_state("us").lock
    assert (lock.owner, lock.reason, lock.auto) == ("alice", "release freeze", False)
    page = client.get(served.url + "/", timeout=10).text
    assert "locked by hand by alice" in page and "release freeze" in page

    again = client.post(url + "/lock", data={"csrf": csrf, "reason": "twice"}, timeout=10)
    assert "us is already locked by hand by alice" in again.text

    answer = client.post(url + "/unlock", data={"csrf": csrf, "reason": "freeze over"},
                         timeout=10)
    assert answer.status_code == 200 and "us unlocked" in answer.text
    assert served.store.pipeline_state("us").lock is None
    assert told(served) == [("lock", "alice"), ("unlock", "alice")]
    released = served.store.locks("us")[0]
    assert (released.released_by, released.reason) == ("alice", "release freeze")


def test_a_rollback_needs_a_chosen_release_and_offers_only_shipped_ones(
        served: Served) -> None:
    client, csrf, _ = log_in(served)
    before = snapshot(served.store)
    answer = client.post(served.url + "/pipelines/us/rollback", data={"csrf": csrf, "to": ""},
                         allow_redirects=False, timeout=10)
    assert answer.status_code == 400 and "choose the release" in answer.text
    assert snapshot(served.store) == before
    page = client.get(served.url + "/pipelines/us", timeout=10).text
    # Only shipped releases that are not live are offered, newest first: r3 (#4), r1 (#2)
    # and r0 (#1); not r5 (#6, live), r4 and r2 (rolled back) nor r6 (halted).
    assert re.findall(r'<option value="(\d+)">', page) == ["4", "2", "1"]


def test_without_auth_configured_pages_are_read_only(tmp_path: Path) -> None:
    with serving(_ship(tmp_path, {})) as served:
        client, csrf = fresh(served)
        page = client.get(served.url + "/", timeout=10).text
        assert "read-only" in page and "/login?" not in page
        before = snapshot(served.store)
        answer = client.post(served.url + "/pipelines/us/lock", data={"csrf": csrf,
                                                                      "reason": "x"},
                             timeout=10)
        assert answer.status_code == 403 and "no operator authentication" in answer.text
        refused = client.post(served.url + "/login", data={"csrf": csrf, "name": "alice",
                                                           "token": TOKEN}, timeout=10)
        assert refused.status_code == 403 and SESSION_COOKIE not in client.cookies
        assert snapshot(served.store) == before


def test_a_token_left_unset_turns_actions_off(tmp_path: Path) -> None:
    with serving(_ship(tmp_path, {"auth": "token"}, env={})) as served:
        client, csrf = fresh(served)
        answer = client.post(served.url + "/login", data={"csrf": csrf, "name": "alice",
                                                          "token": ""}, timeout=10)
        assert answer.status_code == 403 and "SHIP_UI_TOKEN is not set" in answer.text


def test_only_listed_operators_may_log_in(tmp_path: Path) -> None:
    with serving(_ship(tmp_path, {"auth": "token", "operators": ["alice"]})) as served:
        assert log_in(served, "mallory")[2].status_code == 403
        assert log_in(served, "alice")[2].status_code == 303


@pytest.mark.parametrize(("ui", "user", "allowed"), [
    ({"operators": ["alice"]}, "alice", True),
    ({"operators": ["alice"]}, "bob", False),
    ({"operators": ["alice"]}, None, False),
    ({"operators": ["*"]}, "bob", True),
    # The proxy that may name users is elsewhere: a header from here is not believed.
    ({"operators": ["alice"], "trusted_proxies": ["192.0.2.10"]}, "alice", False),
])
def test_a_trusted_proxy_names_the_operator(tmp_path: Path, ui: dict[str, Any],
                                            user: str | None, allowed: bool) -> None:
    with serving(_ship(tmp_path, {"auth": "header", **ui})) as served:
        client = requests.Session()
        if user:
            client.headers["X-Forwarded-User"] = user
        csrf = csrf_of(client.get(served.url + "/", timeout=10).text)
        before = snapshot(served.store)
        answer = client.post(served.url + "/pipelines/us/lock",
                             data={"csrf": csrf, "reason": "proxy"}, allow_redirects=False,
                             timeout=10)
        lock = served.store.pipeline_state("us").lock
        if allowed:
            assert answer.status_code == 303 and lock.owner == user
        else:
            assert answer.status_code == 403 and snapshot(served.store) == before


def test_a_release_waiting_out_a_lock_shows_ready_at_the_door(served: Served) -> None:
    store = served.store
    assert store.record_merge("us", Commit("be" * 20, "ann", "merged behind the lock"))
    claim = store.start_release("us", 50, "ann")
    assert claim.won, claim.reason
    release = claim.release
    for state in (State.BUILDING, State.PREPROD, State.GATING):
        store.move(release.id, state)
    store.take_lock("us", "bob", "incident 3")
    assert store.begin_promotion(release.id).release.state == State.READY
    page = requests.get(served.url + "/pipelines/us", timeout=10).text
    item = page.split(f'data-release="{release.number}"', 1)[1].split("</li>", 1)[0]
    assert '<span class="badge s-ready">ready</span>' in item
    assert 'data-stage="door"' in item and 'data-stage="gates"' in item
