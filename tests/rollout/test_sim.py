"""The simulated fleet: its timelines, failure injection, kept releases and quantiles, read
through FleetStatus at chosen moments of a hand-driven clock."""

from __future__ import annotations

from datetime import datetime, timedelta

from rollout.sim import LISTED_FAILURES, SimFleet, SimFleetConfig
from shiptypes import FleetStatus, ProviderContext, ReleaseRef, RolloutSettings, utcnow


class ManualClock:
    """Pipeline time that moves only when a test says so."""

    def __init__(self) -> None:
        self.at = utcnow()

    def now(self) -> datetime:
        return self.at

    def sleep(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)

    async def wait(self, seconds: float) -> None:
        self.sleep(seconds)


def fleet(clock: ManualClock, stagger: float = 60.0, keep: int = 5, **config: object) -> SimFleet:
    settings = SimFleetConfig.model_validate({"driver": "sim", "seed": 7, **config})
    return SimFleet(settings, RolloutSettings(stagger=stagger, keep_releases=keep),
                    ProviderContext("us", "us-east-1", clock=clock))


def release(number: int) -> ReleaseRef:
    return ReleaseRef(id=number, pipeline="us", number=number, sha=f"{number:07x}")


def at(clock: ManualClock, sim: SimFleet, start: datetime, seconds: float) -> FleetStatus:
    clock.at = start + timedelta(seconds=seconds)
    return sim.observe()


def until_done(clock: ManualClock, sim: SimFleet, poll: float = 5.0) -> list[FleetStatus]:
    seen = [sim.observe()]
    while not seen[-1].done:
        clock.sleep(poll)
        seen.append(sim.observe())
    return seen


def test_every_host_starts_within_fetch_and_stagger_bounds() -> None:
    clock = ManualClock()
    sim = fleet(clock, hosts=1000, fetch=100, jitter=0.2)
    start = clock.now()
    sim.publish(release(1))

    assert at(clock, sim, start, 79.9).started == 0  # the fastest fetch is 100 s - 20%
    midway = at(clock, sim, start, 110)
    assert 0 < midway.started < 1000 and not midway.all_started
    last = at(clock, sim, start, 120 + 60)  # the slowest fetch, then the whole stagger
    assert last.all_started and last.started + last.failed == 1000
    assert last.all_started_at is not None
    assert start + timedelta(seconds=80) < last.all_started_at <= start + timedelta(seconds=180)


def test_a_failing_release_fails_its_share_of_hosts() -> None:
    clock = ManualClock()
    sim = fleet(clock, hosts=1000, fail_releases=[2], fail_share=0.3)
    sim.publish(release(2))

    done = until_done(clock, sim)[-1]

    assert 240 < done.failed < 360 and done.converged + done.failed == 1000
    assert len(done.failures) == LISTED_FAILURES
    assert all(f.reason == "replacement worker never became healthy" for f in done.failures)
    assert done.half_at is not None and done.p95_at is None  # 95% never converge

    sim.publish(release(3))  # not a failing release
    assert until_done(clock, sim)[-1].failed == 0


def test_a_release_failing_everywhere_serves_no_request() -> None:
    clock = ManualClock()
    sim = fleet(clock, hosts=50, fail_releases=[4])
    sim.publish(release(4))
    done = until_done(clock, sim)[-1]
    assert (done.failed, done.converged, done.first_request_at, done.half_at) == (50, 0, None, None)


def test_rolling_back_to_a_kept_release_skips_the_fetch() -> None:
    clock = ManualClock()
    sim = fleet(clock, stagger=10, keep=2, hosts=200, fetch=1000, workers=1, drain=1,
                worker_boot=5, fail_releases=[4])
    for number in (1, 2):
        sim.publish(release(number))
    start = clock.now()

    sim.publish(release(1))  # kept: on every host already
    assert at(clock, sim, start, 30).converged == 200

    for number, kept in ((3, False), (1, True), (2, False), (4, False), (4, False)):
        start = clock.now()
        sim.publish(release(number))
        assert at(clock, sim, start, 30).done is kept, number
    # 2 fell out of the two kept (1 and 3 came after it); 4 failed, so it was never kept.


def test_quantile_timestamps_are_ordered_and_appear_once_reached() -> None:
    clock = ManualClock()
    sim = fleet(clock, hosts=500)
    start = clock.now()
    sim.publish(release(1))

    seen = until_done(clock, sim)

    for status in seen:
        assert (status.half_at is not None) == (status.converged >= 250)
        assert (status.p95_at is not None) == (status.converged >= 475)
        assert status.converged == 0 or status.first_request_at is not None
    final = seen[-1]
    moments = [start, final.first_request_at, final.half_at, final.p95_at, final.converged_at]
    assert None not in moments and moments == sorted(moments)
    assert final.converged_at <= clock.now()
    # Once reached, a moment never moves.
    assert {s.half_at for s in seen if s.half_at} == {final.half_at}


def test_every_host_has_started_before_the_fleet_is_done() -> None:
    clock = ManualClock()
    sim = fleet(clock, hosts=300)
    sim.publish(release(1))

    seen = until_done(clock, sim)

    first_all_started = next(i for i, s in enumerate(seen) if s.all_started)
    assert first_all_started < len(seen) - 1  # restarts still running after the last start
    assert all(s.all_started for s in seen[first_all_started:])
    assert seen[-1].all_started_at is not None and seen[-1].converged_at is not None
    assert seen[-1].all_started_at <= seen[-1].converged_at


def test_default_timings_follow_the_published_fleet() -> None:
    clock = ManualClock()
    sim = fleet(clock, stagger=120, hosts=2000)  # pipelines.yaml: stagger 2m
    start = clock.now()
    sim.publish(release(1))

    done = until_done(clock, sim)[-1]

    def minutes(moment: datetime | None) -> float:
        assert moment is not None
        return (moment - start).total_seconds() / 60

    assert 1.7 <= minutes(done.first_request_at) <= 2.3  # first requests about 2 min in
    assert minutes(done.p95_at) <= 6.0  # most of the fleet within 6 min
    assert minutes(done.first_request_at) < minutes(done.half_at) < minutes(done.p95_at)


def test_observe_before_publish_knows_only_the_fleet_size() -> None:
    status = fleet(ManualClock(), hosts=42).observe()
    assert (status.release, status.hosts, status.started, status.done) == (None, 42, 0, False)


def test_a_newer_release_overtakes_one_still_rolling_out() -> None:
    """Hosts still waiting out their stagger take the newer release at the same moment;
    the older is on every host (or overtaken there) exactly when its own rollout would be."""
    clock = ManualClock()
    sim = fleet(clock, stagger=100, hosts=400, fetch=10, workers=1, drain=1, worker_boot=5)
    sim.publish(release(1))
    start = clock.now()
    alone = at(clock, sim, start, 0)
    assert alone.floor is None  # nothing had settled before release 1
    all_started_1 = at(clock, sim, start, 200).all_started_at
    clock.at = start + timedelta(seconds=50)
    sim.publish(release(2))

    halfway = at(clock, sim, start, 60)
    assert halfway.release == 2 and halfway.floor is None
    assert 0 < halfway.started < 400  # the waiting hosts start 2 where they would start 1
    settled = at(clock, sim, start, (all_started_1 - start).total_seconds())
    assert settled.floor == 1  # every host runs 1 or 2: release 1's commits are everywhere
    assert at(clock, sim, start, 400).floor == 2
