"""The web UI in a real headless Chromium (Debian's, driven by Playwright): open the
overview, open a release, log in, roll back, see the pipeline locked, unlock. The releases
went through the real flows on the Prefect test API; the rollback runs its flow on the
server's event loop."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Browser, Page, expect, sync_playwright

from orchestrator import dora
from orchestrator.release import State
from orchestrator.runner import Runner
from orchestrator.web import routes
from shiptypes import Commit
from tests.fakehttp import FakeServer, Reply
from tests.web.conftest import TOKEN, Served, make_ship, serving, ship_releases, sim_config

CHROMIUM = "/usr/bin/chromium"
# As root on a machine with no internet: no sandbox, no background connections.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]
PHONE = {"width": 390, "height": 844}
SHOTS = os.environ.get("SHIP_SCREENSHOTS")  # a folder: save what the pages look like


@pytest.fixture(scope="module")
def served(prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """us: three clean releases, its boot gate polling a real pre-prod health URL;
    eu: release 2 breaks the heartbeat, is rolled back automatically and locks eu."""
    with FakeServer() as preprod:
        preprod.route("GET", "/health", Reply(body="ok"))
        loaded = sim_config({"auth": "token"}, preprod.url, breaches={"eu": [2]})
        ship = make_ship(tmp_path_factory.mktemp("web"), loaded)
        runner = Runner(ship)
        assert [o.state for o in ship_releases(runner, "us", 3)] == ["done"] * 3
        assert [o.state for o in ship_releases(runner, "eu", 2)] == ["done", "breach"]
        with serving(ship, runner) as running:
            yield running


@pytest.fixture(scope="module")
def browser(served: Served) -> Iterator[Browser]:
    # Started after the releases shipped: Playwright's sync API owns this thread's loop.
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, served: Served) -> Iterator[Page]:
    context = browser.new_context(viewport=PHONE, base_url=served.url)
    context.set_default_timeout(20_000)
    opened = context.new_page()
    asked: list[str] = []
    opened.on("request", lambda request: asked.append(request.url))
    yield opened
    context.close()
    # Everything the pages needed came from ship itself: no CDN, no other host.
    assert asked and all(url.startswith(served.url + "/") for url in asked)


def shot(page: Page, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=f"{SHOTS}/{name}.png", full_page=True)


def test_the_overview_shows_each_pipeline_its_lock_and_release_timelines(
        page: Page, served: Served) -> None:
    page.goto("/")
    us, eu = page.locator("[data-pipeline=us]"), page.locator("[data-pipeline=eu]")
    expect(us.locator(".live-release")).to_contain_text("us#3")
    expect(us.locator("[data-lock]")).to_have_attribute("data-lock", "open")
    expect(eu.locator(".live-release")).to_contain_text("eu#1")
    expect(eu.locator(".lock-owner")).to_have_text("heartbeat")
    expect(eu.locator(".lock-reason")).to_contain_text("auto-rollback: messages_created")
    latest = us.locator("[data-release='3']")
    stages = latest.locator("svg.timeline rect[data-stage]")
    assert [stages.nth(i).get_attribute("data-stage") for i in range(stages.count())] == [
        "build", "CI", "pre-prod", "gates", "rollout", "watch"]
    expect(latest.locator(".durations")).to_contain_text(re.compile(r"rollout \d+s"))
    expect(eu.locator("[data-release='2'] .badge")).to_have_text("rolled back")
    # A reader sees no action, and is offered to log in.
    expect(page.locator("form[action$='/lock'], form[action$='/rollback']")).to_have_count(0)
    expect(page.locator("#login-link")).to_be_visible()
    # Readable on a phone: nothing wider than the screen.
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    shot(page, "overview-phone")


def test_a_release_page_shows_commits_gates_rollout_heartbeat_and_events(
        page: Page, served: Served) -> None:
    page.goto("/")
    page.locator("[data-pipeline=us] [data-release='3'] a.release-link").click()
    expect(page).to_have_url(re.compile(r"/pipelines/us/releases/3$"))
    release = served.store.release_by_number("us", 3)
    expect(page.locator("ul.commits")).to_contain_text(release.sha[:7])
    expect(page.locator("ul.commits")).to_contain_text("ann")
    boot = page.locator("[data-gate=boot]")
    expect(boot).to_contain_text("passed: healthy")
    health = served.ship.config.pipeline("us").preprod.url.rstrip("/") + "/health"
    expect(boot.locator("a")).to_have_attribute("href", health)
    expect(page.locator("[data-rollout=promote]")).to_contain_text("50/50 converged")
    chart = page.locator("[data-metric=messages_created] svg.heartbeat")
    for part in ("[data-line=observed]", "[data-line=baseline]", "[data-line=threshold]",
                 "[data-mark=live]"):
        expect(chart.locator(part)).to_have_count(1)
    expect(chart.locator("[data-mark=breach]")).to_have_count(0)
    kinds = page.locator("ol.events li").evaluate_all("els => els.map(e => e.dataset.kind)")
    stages = ["queued", "building", "preprod", "gating", "promoting", "live", "watching", "done"]
    assert [k for k in kinds if k in stages] == stages and kinds.count("gate") == 3
    shot(page, "release-phone")


def test_a_breach_is_marked_on_the_heartbeat_chart(page: Page, served: Served) -> None:
    page.goto("/pipelines/eu/releases/2")
    [rollback] = served.store.rollbacks("eu")
    chart = page.locator("[data-metric=messages_created] svg.heartbeat")
    breach = chart.locator("[data-mark=breach]")
    expect(breach.locator("circle")).to_have_count(1)
    expect(breach.locator("title")).to_have_text(re.compile(
        rf"^breach at {rollback.breach_at:%H:%M:%S}: [\d,]+/min vs baseline [\d,]+/min"))
    expect(chart.locator("[data-mark=rollback]")).to_have_count(1)
    expect(page.locator("ol.events [data-kind=breach]")).to_contain_text("heartbeat breach")
    expect(page.locator(".rollback-note")).to_contain_text("breach → restored in")
    shot(page, "breach-phone")


def test_an_operator_rolls_back_sees_the_pipeline_locked_and_unlocks(
        page: Page, served: Served) -> None:
    confirmed: list[str] = []

    def confirm(dialog: object) -> None:
        confirmed.append(dialog.message)  # type: ignore[attr-defined]
        dialog.accept()  # type: ignore[attr-defined]

    page.on("dialog", confirm)
    page.goto("/")
    page.locator("#login-link").click()
    page.get_by_label("Your name").fill("alice")
    page.get_by_label("Operator token").fill(TOKEN)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#operator")).to_have_text("alice")
    expect(page.locator("#flash")).to_have_text("logged in as alice")

    page.goto("/pipelines/us/releases/2")  # each earlier release offers itself…
    expect(page.locator("#rollback-here button")).to_have_text("Roll back to us#2 and lock")
    page.goto("/")  # …and the overview offers them all
    us = page.locator("[data-pipeline=us]")
    rollback = us.locator("form.rollback")
    assert rollback.locator("option").evaluate_all("os => os.map(o => o.value)") == ["2", "1"]
    rollback.get_by_label("Roll back to").select_option("1")
    rollback.get_by_label("Reason").fill("bad copy in #3")
    rollback.get_by_role("button", name="Roll back and lock").click()
    expect(page.locator("#flash")).to_contain_text("rolled back us#3 → us#1; us is locked")
    expect(us.locator(".lock-owner")).to_have_text("alice")
    expect(us.locator(".lock-reason")).to_have_text("bad copy in #3")
    state = served.store.pipeline_state("us")
    assert state.live.number == 1 and state.rollback is None
    assert (state.lock.owner, state.lock.auto) == ("alice", False)
    assert [r.state for r in served.store.releases("us")] == [
        State.ROLLED_BACK, State.ROLLED_BACK, State.DONE]
    [rollback] = served.store.rollbacks("us")
    assert (rollback.actor, rollback.outcome, rollback.auto) == ("alice", "done", False)
    assert served.ship.pipeline("us").fleet.observe().release == 1

    page.goto("/pipelines/us")
    expect(page.locator("table").filter(has_text="outcome")).to_contain_text("#3 → #1")
    page.goto("/")
    expect(us.locator(".live-release")).to_contain_text("us#1")
    expect(us.locator("[data-lock]")).to_have_attribute("data-lock", "locked")
    expect(us.locator(".lock-owner")).to_have_text("alice")
    us.locator("form[action$='/unlock']").get_by_label("Reason").fill("fixed forward")
    us.get_by_role("button", name="Unlock").click()
    expect(page.locator("#flash")).to_contain_text("us unlocked")
    expect(us.locator("[data-lock]")).to_have_attribute("data-lock", "open")
    assert served.store.pipeline_state("us").lock is None
    assert served.store.locks("us")[0].released_by == "alice"
    # ship's script asked before each action: it was served and ran.
    assert confirmed == ["Roll back us? The pipeline will be locked.",
                         "Unlock us? Releases will be promoted again."]

    page.goto("/dora")
    shipped = dora.measure(served.store, "us", 1)
    assert (shipped.shipped, shipped.rolled_back) == (3, 2)
    cfr = "td[data-figure=cfr][data-days='1']"
    expect(page.locator(f"[data-dora=us] {cfr}")).to_have_text("67% (2/3)")
    expect(page.locator(f"[data-dora=eu] {cfr}")).to_have_text("50% (1/2)")
    expect(page.locator("#dora-us svg.bars")).to_have_count(4)
    shot(page, "dora-phone")


def test_a_rollback_the_flow_refuses_is_reported_and_changes_nothing(served: Served) -> None:
    client, csrf = _logged_in(served, "bob")
    before = (served.store.pipeline_state("us"), served.store.rollbacks("us"))
    answer = client.post(served.url + "/pipelines/us/rollback",
                         data={"csrf": csrf, "to": "99", "reason": "try"}, timeout=30)
    assert "rollback refused: us has no release #99" in answer.text
    assert (served.store.pipeline_state("us"), served.store.rollbacks("us")) == before


def test_a_slow_rollback_answers_at_once_and_goes_on_on_the_servers_loop(
        served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    store = served.store
    store.unlock("us", "test", "set up")
    commit = Commit("ab" * 20, "erin", "one more", served.ship.clock.now())
    shipped = served.run(served.runner.deploy("us", [commit], "erin"))
    assert shipped.release.state == State.DONE
    target = next(r for r in store.releases("us") if r.state == State.DONE
                  and r.id != shipped.release.id)
    earlier = len(store.rollbacks("us"))
    monkeypatch.setattr(routes, "ROLLBACK_WAIT_S", 0.0)  # answer before the fleet moves
    client, csrf = _logged_in(served, "carol")
    answer = client.post(served.url + "/pipelines/us/rollback",
                         data={"csrf": csrf, "to": str(target.number)}, timeout=30)
    assert f"rollback to us#{target.number} started by carol; us is locked" in answer.text
    deadline = time.monotonic() + 120
    while (store.pipeline_state("us").rollback is not None
           or len(store.rollbacks("us")) == earlier):
        assert time.monotonic() < deadline, "the rollback never finished"
        time.sleep(0.1)
    latest = store.rollbacks("us")[0]
    assert (latest.actor, latest.outcome, latest.reason) == (
        "carol", "done", "rollback from the web UI by carol")
    assert store.pipeline_state("us").live.id == target.id
    assert store.pipeline_state("us").lock.owner == "carol"


def _logged_in(served: Served, name: str) -> tuple[requests.Session, str]:
    client = requests.Session()
    page = client.get(served.url + "/login", timeout=10).text
    csrf = re.search(r'<meta name="csrf-token" content="([^"]+)">', page).group(1)
    client.post(served.url + "/login", data={"csrf": csrf, "name": name, "token": TOKEN},
                timeout=10).raise_for_status()
    return client, csrf
