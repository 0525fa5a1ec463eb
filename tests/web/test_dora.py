"""DORA figures over 1, 7 and 30 days against a history written by hand (see
write_history), each figure computed by hand here: from the store, from `ship dora --json`
and on the web UI's pages."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from orchestrator import cli, dora
from orchestrator.release import State
from orchestrator.runtime import Ship
from orchestrator.store import Release, Rollback, Store
from shiptypes import Commit
from tests.conftest import SIM_PIPELINES
from tests.web.conftest import DAY, SetClock, serving, sim_config, write_history

# Lead times (merge → live, minutes) of the releases that shipped, by release:
#   r1: 60, 30   r2: 45   r3: 20   r4: 90, 15   r5: 10
# Nearest-rank quantiles: the ⌈q·n⌉-th smallest value.
EXPECTED = {
    # (since, now]: r4, r5 shipped; r4 rolled back; r4's rollback took 4 min.
    # leads [10, 15, 90]: p50 rank 2 → 15, p90 rank 3 → 90
    1: dict(shipped=2, per_day=2.0, lead_p50_min=15.0, lead_p90_min=90.0,
            change_failure_rate=0.5, failed=1, rolled_back=1, restore_p50_min=4.0),
    # r3, r4, r5; leads [10, 15, 20, 90]: p50 rank 2 → 15, p90 rank 4 → 90
    7: dict(shipped=3, per_day=3 / 7, lead_p50_min=15.0, lead_p90_min=90.0,
            change_failure_rate=1 / 3, failed=1, rolled_back=1, restore_p50_min=4.0),
    # r1…r5; leads [10, 15, 20, 30, 45, 60, 90]: p50 rank 4 → 30, p90 rank 7 → 90;
    # r2 and r4 rolled back; restores [4, 6]: p50 rank 1 → 4
    30: dict(shipped=5, per_day=5 / 30, lead_p50_min=30.0, lead_p90_min=90.0,
             change_failure_rate=0.4, failed=2, rolled_back=2, restore_p50_min=4.0),
}
SHOWN = {  # the same figures as the web UI prints them
    "shipped": ("2", "3", "5"),
    "per-day": ("2.00", "0.43", "0.17"),
    "lead-p50": ("15.0 min", "15.0 min", "30.0 min"),
    "lead-p90": ("90.0 min", "90.0 min", "90.0 min"),
    "cfr": ("50% (1/2)", "33% (1/3)", "40% (2/5)"),
    "restore": ("4.0 min", "4.0 min", "4.0 min"),
}


@pytest.fixture
def history(tmp_path: Path) -> tuple[Store, datetime]:
    now = datetime.now(UTC).replace(microsecond=0)
    clock = SetClock(now)
    store = Store(f"sqlite:///{tmp_path}/ship.db", clock)
    write_history(store, clock, now)
    return store, now


def _figures(figure: dora.Dora) -> dict[str, object]:
    found = figure.as_dict()
    return {k: pytest.approx(v) if isinstance(v, float) else v for k, v in found.items()
            if k in EXPECTED[1]}


@pytest.mark.parametrize("days", [1, 7, 30])
def test_figures_match_the_hand_computed_history(history: tuple[Store, datetime],
                                                 days: int) -> None:
    store, now = history
    figure = dora.measure(store, "us", days, now=now)
    assert figure.days == days and figure.pipeline == "us"
    assert _figures(figure) == EXPECTED[days]


def test_days_are_half_open_so_each_release_counts_once(history: tuple[Store, datetime]) -> None:
    store, now = history
    daily = dora.History.read(store, "us").daily(30, now)
    shipped = [d.shipped for d in daily]
    # r1 −20d, r2 −10d, r3 exactly −5d (the day that ends then), r4 and r5 today.
    expected = [0] * 30
    expected[29 - 20] = expected[29 - 10] = expected[29 - 5] = 1
    expected[29] = 2
    assert shipped == expected
    assert sum(shipped) == dora.measure(store, "us", 30, now=now).shipped
    assert [d.restore_p50_min for d in daily if d.restore_p50_min is not None] == [6.0, 4.0]


def test_an_empty_pipeline_has_no_figures_rather_than_zeros(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/ship.db", SetClock(datetime.now(UTC)))
    figure = dora.measure(store, "eu", 7)
    assert (figure.shipped, figure.per_day) == (0, 0.0)
    assert figure.lead_p50_min is None and figure.change_failure_rate is None
    assert figure.restore_p50_min is None


def test_a_lookback_rollback_blames_the_release_serving_at_the_breach() -> None:
    """Five releases live a minute apart; the breach begins under #3 and the automatic
    rollback goes back to #1: #2…#5 are undone, only #3 failed."""
    t0 = datetime(2026, 11, 16, 9, 0, tzinfo=UTC)

    def release(n: int, state: State) -> Release:
        live = t0 + timedelta(minutes=n)
        return Release(n, "us", n, state, f"{n:040x}", (Commit(f"{n:040x}", "ann", "", live),),
                       None, {"live": live}, None, None, live)

    releases = [release(1, State.DONE)] + [release(n, State.ROLLED_BACK) for n in (2, 3, 4, 5)]
    auto = Rollback(1, "us", 5, 1, "ship", "breach", True, t0 + timedelta(minutes=3.5),
                    t0 + timedelta(minutes=6), t0 + timedelta(minutes=7), "done")
    figures = dora.compute("us", releases, [auto], t0, t0 + timedelta(hours=1))
    assert (figures.shipped, figures.failed, figures.rolled_back) == (5, 1, 4)
    assert figures.change_failure_rate == pytest.approx(0.2)
    by_hand = Rollback(2, "us", 5, 2, "ann", "bad copy", False, None,
                       t0 + timedelta(minutes=6), t0 + timedelta(minutes=7), "done")
    assert dora.failed_releases(releases, [by_hand]) == {3, 4, 5}  # the person chose


def test_nearest_rank_quantiles() -> None:
    assert dora.quantile([], 0.5) is None
    assert dora.quantile([7.0], 0.9) == 7.0
    ten = [float(v) for v in range(1, 11)]
    assert (dora.quantile(ten, 0.5), dora.quantile(ten, 0.9)) == (5.0, 9.0)
    assert dora.quantile(list(reversed(ten)), 0.9) == 9.0


def test_ship_dora_json_prints_the_same_figures(history: tuple[Store, datetime], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    store, _ = history
    monkeypatch.setenv("SHIP_DATABASE_URL", store.url)
    (tmp_path / "pipelines.yaml").write_text(SIM_PIPELINES)
    # The CLI measures against the wall clock, seconds after the history was written:
    # no release is that close to a window's edge.
    assert cli.main(["--config", str(tmp_path / "pipelines.yaml"), "dora", "us",
                     "--json"]) == cli.OK
    printed = json.loads(capsys.readouterr().out)
    assert [row["days"] for row in printed] == [1, 7, 30]
    for row in printed:
        assert _figures(dora.Dora(**row)) == EXPECTED[int(row["days"])]


def test_the_web_ui_shows_the_same_figures(history: tuple[Store, datetime],
                                           tmp_path: Path) -> None:
    store, now = history
    ship = Ship(sim_config({}), store, SetClock(now), notifiers=[], env={})
    with serving(ship) as served:
        for path in ("/dora", "/pipelines/us"):
            page = served.session().get(served.url + path, timeout=10).text
            table = re.search(r'<table class="dora" data-dora="us">(.*?)</table>', page, re.S)
            assert table, path
            shown: dict[str, list[str]] = {}
            columns: dict[str, list[str]] = {}
            for figure, days, cell in re.findall(
                    r'<td data-figure="([\w-]+)" data-days="(\d+)">(.*?)</td>', table.group(1),
                    re.S):
                shown.setdefault(figure, []).append(" ".join(re.sub(r"<[^>]+>", " ",
                                                                     cell).split()))
                columns.setdefault(figure, []).append(days)
            assert {k: tuple(v) for k, v in shown.items()} == SHOWN, path
            assert all(days == ["1", "7", "30"] for days in columns.values())
        dora_page = served.session().get(served.url + "/dora", timeout=10).text
        # One bar per day that shipped, each titled with its day and count.
        day = now - 5 * DAY
        assert f"{day:%b %d}: 1 shipped" in dora_page
        assert f"{now:%b %d}: 2 shipped" in dora_page
