"""The store: releases, merges, an append-only event log, gate results, locks, rollbacks,
rollout summaries and the live history, in SQLite (default) or PostgreSQL (same code).

Every write is one transaction, and every change of state writes its event in that same
transaction. Taking the lock, claiming the pipeline for a release and starting a rollback
are compare-and-set updates on the pipeline's row, so of two racing callers exactly one
wins, across threads and processes alike.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from orchestrator import schema as t
from orchestrator.handle import database_url
from orchestrator.release import (
    HOLDS_PIPELINE,
    ID_MAX,
    IN_FLIGHT,
    SHIPPED,
    State,
    check_transition,
)
from shiptypes import Clock, Commit, FleetStatus, GateResult, Link, ReleaseRef, Slug, WallClock

# --- what the store hands out -------------------------------------------------------------


@dataclass(frozen=True)
class Release:
    id: int
    pipeline: str
    number: int
    state: State
    sha: str
    commits: tuple[Commit, ...]
    slug: Slug | None
    stage_times: dict[str, datetime]
    reason: str | None
    halted_by: str | None
    created_at: datetime
    preprod_slot: int = 0

    @property
    def name(self) -> str:
        return f"{self.pipeline}#{self.number}"

    def ref(self) -> ReleaseRef:
        return ReleaseRef(self.id, self.pipeline, self.number, self.sha, self.slug, self.commits)

    def entered(self, state: State) -> datetime | None:
        return self.stage_times.get(state.value)


@dataclass(frozen=True)
class Lock:
    id: int
    pipeline: str
    owner: str
    reason: str
    auto: bool
    taken_at: datetime
    released_at: datetime | None = None
    released_by: str | None = None

    def describe(self) -> str:
        kind = "automatically" if self.auto else "by hand"
        return f"locked {kind} by {self.owner} at {self.taken_at:%Y-%m-%d %H:%M:%S}Z: {self.reason}"


@dataclass(frozen=True)
class Rollback:
    id: int
    pipeline: str
    from_id: int
    to_id: int
    actor: str
    reason: str
    auto: bool
    breach_at: datetime | None
    started_at: datetime
    finished_at: datetime | None
    outcome: str


@dataclass(frozen=True)
class Claim:
    """The outcome of a compare-and-set: `won`, or who holds what was wanted."""

    won: bool
    lock: Lock | None = None
    rollback: Rollback | None = None
    release: Release | None = None
    reason: str = ""


@dataclass(frozen=True)
class Event:
    id: int
    at: datetime
    pipeline: str
    release_id: int | None
    kind: str
    actor: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PipelineState:
    name: str
    live: Release | None
    in_flight: Release | None  # the newest release in flight
    lock: Lock | None
    rollback: Rollback | None
    hold_reason: str | None
    pending_merges: int
    flights: tuple[Release, ...] = ()  # every release in flight, newest first


@dataclass(frozen=True)
class LiveEntry:
    release_id: int
    number: int
    state: State
    since: datetime
    via: str


@dataclass(frozen=True)
class NoticeRef:
    """Where a notifier sent a release's notices (a Slack message, a GitHub deployment)."""

    release_id: int
    notifier: str
    ref: str
    data: dict[str, Any] = field(default_factory=dict)


class StoreError(Exception):
    pass


class ConcurrentUpdate(StoreError):
    pass


# --- the store ------------------------------------------------------------------------------


class Store:
    _migrated: set[str] = set()
    _migrate_lock = threading.Lock()

    def __init__(self, url: str | None = None, clock: Clock | None = None) -> None:
        self.url = url or database_url()
        self.clock = clock or WallClock()
        self.engine = _engine(self.url)
        self.migrate()

    def close(self) -> None:
        self.engine.dispose()

    def migrate(self) -> None:
        """Bring the schema to the newest migration (once per process and database)."""
        with Store._migrate_lock:
            if self.url in Store._migrated:
                return
            from alembic import command
            from alembic.config import Config

            config = Config()
            config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
            with self._tx() as conn:
                if conn.dialect.name == "postgresql":
                    # Serialise concurrent first starts; SQLite's BEGIN IMMEDIATE does it there.
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(7411)"))
                config.attributes["connection"] = conn
                command.upgrade(config, "head")
            Store._migrated.add(self.url)

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    def now(self) -> datetime:
        return self.clock.now()

    # --- pipelines ---------------------------------------------------------------------

    def ensure_pipeline(self, name: str) -> None:
        with self._tx() as conn:
            _ensure_pipeline(conn, name)

    def pipeline_state(self, name: str) -> PipelineState:
        with self._tx() as conn:
            row = _ensure_pipeline(conn, name)
            pending = conn.execute(
                sa.select(sa.func.count()).select_from(t.merges)
                .where(t.merges.c.pipeline == name, t.merges.c.release_id.is_(None))).scalar_one()
            flights = _flights(conn, name)
            return PipelineState(
                name=name,
                live=_release(conn, row.live_id),
                in_flight=flights[0] if flights else None,
                flights=flights,
                lock=_lock(conn, row.lock_id),
                rollback=_rollback(conn, row.rollback_id),
                hold_reason=row.hold_reason,
                pending_merges=pending,
            )

    def override_hold(self, pipeline: str, actor: str, reason: str) -> str | None:
        """A person lets promotions go on without heartbeat data. Returns the hold that was
        lifted, or None if there was none."""
        with self._tx() as conn:
            held = _ensure_pipeline(conn, pipeline).hold_reason
            if held is None:
                return None
            conn.execute(t.pipelines.update().where(t.pipelines.c.name == pipeline)
                         .values(hold_reason=None))
            self._event(conn, pipeline, "hold_override",
                        f"hold lifted by {actor}: {reason} (was: {held})", actor)
            return held

    def set_hold(self, pipeline: str, reason: str | None, actor: str = "ship") -> bool:
        """Hold (or with None, release) the next promotion. True if anything changed."""
        with self._tx() as conn:
            row = _ensure_pipeline(conn, pipeline)
            if row.hold_reason == reason:
                return False
            conn.execute(t.pipelines.update().where(t.pipelines.c.name == pipeline)
                         .values(hold_reason=reason))
            message = f"promotions held: {reason}" if reason else "promotions no longer held"
            self._event(conn, pipeline, "hold" if reason else "unhold", message, actor)
            return True

    def mark_stall(self, pipeline: str, paged: bool) -> bool:
        """Record that on-call was paged for a stall (or that it was resolved). True if this
        call changed it, so a page and its resolve are each sent once."""
        with self._tx() as conn:
            _ensure_pipeline(conn, pipeline)
            condition = (t.pipelines.c.stall_paged_at.is_(None) if paged
                         else t.pipelines.c.stall_paged_at.is_not(None))
            changed = conn.execute(
                t.pipelines.update().where(t.pipelines.c.name == pipeline, condition)
                .values(stall_paged_at=self.now() if paged else None)).rowcount
            return changed == 1

    def begin_promotion(self, release_id: int, actor: str = "ship",
                        newest_only: bool = False) -> Claim:
        """Move a gated release to promoting unless the pipeline is locked or held, checked
        in the same transaction so a lock taken a moment earlier always wins; refused, the
        release is `ready` (waiting at the door). A release that a newer one overtook is
        superseded instead: the newer carries its commits. With `newest_only` (a release
        that waited out a lock) it also stands aside for any newer release or merge: after a
        rollback, what merged since may be the fix, and the older release lacks it."""
        with self._tx() as conn:
            release = _release(conn, release_id)
            row = _ensure_pipeline(conn, release.pipeline, lock=True)
            superseded = self._supersede_if_overtaken(conn, release, actor) or (
                self._stand_aside(conn, release, actor) if newest_only else None)
            if superseded is not None:
                return Claim(False, release=superseded, reason=superseded.reason or "")
            lock = _lock(conn, row.lock_id)
            if lock is None and not row.hold_reason:
                return Claim(True, release=self._move(conn, release_id, State.PROMOTING, actor))
            if release.state != State.READY:
                release = self._move(conn, release_id, State.READY, actor)
            if lock is not None:
                return Claim(False, lock=lock, release=release, reason=lock.describe())
            return Claim(False, release=release, reason=f"held: {row.hold_reason}")

    def _stand_aside(self, conn: Connection, release: Release, actor: str) -> Release | None:
        """Supersede a release with a newer one in flight, or merges waiting behind it."""
        newer = conn.execute(sa.select(t.releases.c.number).where(
            t.releases.c.pipeline == release.pipeline, t.releases.c.number > release.number,
            t.releases.c.state.in_([s.value for s in HOLDS_PIPELINE]))
            .order_by(t.releases.c.number.desc()).limit(1)).scalar()
        if newer is not None:
            why = f"{release.pipeline}#{newer}, newer, carries its commits past the lock"
        elif conn.execute(sa.select(t.merges.c.id).where(
                t.merges.c.pipeline == release.pipeline, t.merges.c.release_id.is_(None))
                .limit(1)).first():
            why = "merges newer than it wait: the next release carries its commits past the lock"
        else:
            return None
        return self._move(conn, release.id, State.SUPERSEDED, actor, reason=why)

    # --- merges and release trains ------------------------------------------------------

    def record_merge(self, pipeline: str, commit: Commit, delivery_id: str | None = None) -> bool:
        """Queue a merged commit for the next release. False if it was already recorded."""
        with self._tx() as conn:
            _ensure_pipeline(conn, pipeline, lock=True)  # one recorder of a commit at a time
            return self._queue_merges(conn, pipeline, [commit], delivery_id) == 1

    def record_merges(self, pipeline: str, commits: list[Commit] | tuple[Commit, ...],
                      delivery_id: str | None = None) -> int:
        """Queue merged commits for the next release, in their order, in one transaction;
        those recorded already (or twice in `commits`) are skipped, and a delivery that
        queued merges before queues nothing. Returns how many were queued."""
        with self._tx() as conn:
            _ensure_pipeline(conn, pipeline, lock=True)
            if delivery_id and _delivery_seen(conn, pipeline, delivery_id):
                return 0
            return self._queue_merges(conn, pipeline, commits, delivery_id)

    def _queue_merges(self, conn: Connection, pipeline: str,
                      commits: list[Commit] | tuple[Commit, ...], delivery_id: str | None) -> int:
        seen = _recorded_shas(conn, pipeline, [c.sha for c in commits])
        new = []
        for commit in commits:
            if commit.sha not in seen:
                seen.add(commit.sha)
                new.append(commit)
        if not new:
            return 0
        now = self.now()
        conn.execute(t.merges.insert(), [
            {"pipeline": pipeline, "sha": c.sha, "author": c.author, "message": c.message,
             "merged_at": c.merged_at or now, "delivery_id": delivery_id} for c in new])
        conn.execute(t.events.insert(), [
            self._event_row(pipeline, "merge", f"merged {c.sha[:7]} by {c.author}",
                            c.author or "github", data={"sha": c.sha}) for c in new])
        return len(new)

    def pending_merges(self, pipeline: str, limit: int) -> list[Commit]:
        """The merges the next release train would take, oldest first (as start_release
        takes them), without claiming anything."""
        with self._tx() as conn:
            rows = conn.execute(
                sa.select(t.merges).where(t.merges.c.pipeline == pipeline,
                                          t.merges.c.release_id.is_(None))
                .order_by(t.merges.c.merged_at, t.merges.c.id)
                .limit(_limit(limit))).all()
        return [Commit(m.sha, m.author, m.message, m.merged_at) for m in rows]

    def supersede_if_overtaken(self, release_id: int, actor: str = "ship") -> Release | None:
        """Supersede the release if a newer one reached the fleet while it was on its way
        (checked and moved in one transaction). Returns it superseded, or None."""
        with self._tx() as conn:
            return self._supersede_if_overtaken(conn, _release(conn, release_id), actor)

    def _supersede_if_overtaken(self, conn: Connection, release: Release,
                                actor: str) -> Release | None:
        newer = _overtaken_by(conn, release)
        if newer is None:
            return None
        return self._move(conn, release.id, State.SUPERSEDED, actor, reason=(
            f"{newer.name} reached the fleet first: it, or the release after it, carries "
            "these commits"))

    def start_release(self, pipeline: str, max_commits: int, actor: str,
                      in_flight: int = 1, behind_lock: bool = False) -> Claim:
        """Claim a place in the pipeline and create a release carrying the oldest pending
        merges (a release train), with a pre-prod of its own. Refused while locked (unless
        `behind_lock`: the release may go as far as the door), while `in_flight` releases are
        in flight already, or with nothing to ship."""
        with self._tx() as conn:
            # Locked, so that of two racing starters the second reads the first's claim.
            row = _ensure_pipeline(conn, pipeline, lock=True)
            if row.lock_id is not None and not behind_lock:
                lock = _lock(conn, row.lock_id)
                return Claim(False, lock=lock, reason=lock.describe() if lock else "locked")
            flights = _flights(conn, pipeline)
            if len(flights) >= in_flight:
                names = ", ".join(r.name for r in flights)
                return Claim(False, release=flights[0],
                             reason=f"{names} {'is' if len(flights) == 1 else 'are'} in flight")
            slot = min(set(range(in_flight)) - {r.preprod_slot for r in flights})
            pending = conn.execute(
                sa.select(t.merges).where(t.merges.c.pipeline == pipeline,
                                          t.merges.c.release_id.is_(None))
                .order_by(t.merges.c.merged_at, t.merges.c.id)
                .limit(_limit(max_commits))).all()
            if not pending:
                return Claim(False, reason="nothing merged since the last release")
            now = self.now()
            commits = [{"sha": m.sha, "author": m.author, "message": m.message,
                        "merged_at": m.merged_at.isoformat()} for m in pending]
            release_id = conn.execute(t.releases.insert().values(
                pipeline=pipeline, number=row.next_number, state=State.QUEUED.value,
                sha=pending[-1].sha, commits=commits, stage_times={"queued": now.isoformat()},
                created_at=now, preprod_slot=slot)).inserted_primary_key[0]
            # Compare-and-set on what was read: the newest claim and the lock.
            claimed = conn.execute(
                t.pipelines.update()
                .where(t.pipelines.c.name == pipeline,
                       _unchanged(t.pipelines.c.in_flight_id, row.in_flight_id),
                       t.pipelines.c.next_number == row.next_number,
                       _unchanged(t.pipelines.c.lock_id, row.lock_id))
                .values(in_flight_id=release_id, next_number=row.next_number + 1)).rowcount
            if claimed != 1:
                raise ConcurrentUpdate(f"pipeline {pipeline} changed while starting a release")
            conn.execute(t.merges.update().where(t.merges.c.id.in_([m.id for m in pending]))
                         .values(release_id=release_id))
            release = _release(conn, release_id)
            self._event(conn, pipeline, "queued",
                        f"{release.name} queued with {len(commits)} commit(s)", actor, release_id,
                        {"owner": this_process()})
            return Claim(True, release=release)

    # --- releases --------------------------------------------------------------------------

    def release(self, release_id: int) -> Release:
        if not in_range(release_id):
            raise StoreError(f"no release with id {release_id}")
        with self._tx() as conn:
            found = _release(conn, release_id)
        if found is None:
            raise StoreError(f"no release with id {release_id}")
        return found

    def release_by_number(self, pipeline: str, number: int) -> Release | None:
        """The pipeline's release #number; None for one it never had, including numbers
        no release can have (below 1, beyond ID_MAX)."""
        if not in_range(number):
            return None
        with self._tx() as conn:
            found = conn.execute(sa.select(t.releases.c.id).where(
                t.releases.c.pipeline == pipeline, t.releases.c.number == number)).scalar()
            return _release(conn, found)

    def releases(self, pipeline: str, limit: int = 50) -> list[Release]:
        with self._tx() as conn:
            rows = conn.execute(sa.select(t.releases).where(t.releases.c.pipeline == pipeline)
                                .order_by(t.releases.c.number.desc())
                                .limit(_limit(limit))).all()
            return [_to_release(r) for r in rows]

    def move(self, release_id: int, to: State, actor: str = "ship", reason: str | None = None,
             halted_by: str | None = None) -> Release:
        """Move a release to a new state (compare-and-set on its current state), write the
        event, and free the pipeline when the release stops holding it."""
        with self._tx() as conn:
            return self._move(conn, release_id, to, actor, reason, halted_by)

    def _move(self, conn: Connection, release_id: int, to: State, actor: str,
              reason: str | None = None, halted_by: str | None = None) -> Release:
        current = _release(conn, release_id)
        if current is None:
            raise StoreError(f"no release with id {release_id}")
        check_transition(current.name, current.state, to)
        now = self.now()
        times = {k: v.isoformat() for k, v in current.stage_times.items()} | {to.value:
                                                                              now.isoformat()}
        values: dict[str, Any] = {"state": to.value, "stage_times": times}
        if reason is not None:
            values["reason"] = reason
        if halted_by is not None:
            values["halted_by"] = halted_by
        changed = conn.execute(t.releases.update().where(
            t.releases.c.id == release_id, t.releases.c.state == current.state.value)
            .values(**values)).rowcount
        if changed != 1:
            raise ConcurrentUpdate(f"{current.name} changed state while moving to {to}")
        if current.state in HOLDS_PIPELINE and to not in HOLDS_PIPELINE:
            conn.execute(t.pipelines.update().where(t.pipelines.c.name == current.pipeline,
                                                    t.pipelines.c.in_flight_id == release_id)
                         .values(in_flight_id=None))
        message = f"{current.name} {current.state} → {to}" + (f": {reason}" if reason else "")
        self._event(conn, current.pipeline, to.value, message, actor, release_id,
                    {"from": current.state.value, "to": to.value})
        return _release(conn, release_id)

    def set_slug(self, release_id: int, slug: Slug) -> None:
        with self._tx() as conn:
            conn.execute(t.releases.update().where(t.releases.c.id == release_id)
                         .values(slug_id=slug.id, slug_uri=slug.uri,
                                 build=dict(slug.build) if slug.build else None))

    def set_flow_run(self, release_id: int, flow_run_id: str) -> None:
        with self._tx() as conn:
            conn.execute(t.releases.update().where(t.releases.c.id == release_id)
                         .values(flow_run_id=flow_run_id))

    def go_live(self, release_id: int, actor: str = "ship") -> Release:
        """Every host has started the release: it is live, and its place in the pipeline is
        free. Superseded instead if a newer release that overtook it went live first: the
        live release never goes back in time."""
        with self._tx() as conn:
            release = _release(conn, release_id)
            live = _release(conn, _ensure_pipeline(conn, release.pipeline, lock=True).live_id)
            if live is not None and live.number > release.number and live.state in SHIPPED:
                return self._move(conn, release_id, State.SUPERSEDED, actor,
                                  reason=f"{live.name} overtook it and went live first")
            release = self._move(conn, release_id, State.LIVE, actor)
            conn.execute(t.pipelines.update().where(t.pipelines.c.name == release.pipeline)
                         .values(live_id=release_id))
            conn.execute(t.live_history.insert().values(
                pipeline=release.pipeline, release_id=release_id, since=self.now(),
                via="promote"))
            return release

    # --- gates and rollouts ---------------------------------------------------------------

    def record_gate(self, release_id: int, result: GateResult) -> None:
        with self._tx() as conn:
            release = _release(conn, release_id)
            conn.execute(t.gate_results.insert().values(
                release_id=release_id, gate=result.gate, passed=result.passed,
                errored=result.errored, summary=result.summary,
                links=[{"title": link.title, "url": link.url} for link in result.links],
                output_tail=result.output_tail, duration_s=result.duration_s, at=self.now()))
            verdict = "passed" if result.passed else ("errored" if result.errored else "failed")
            self._event(conn, release.pipeline, "gate",
                        f"{release.name} gate {result.gate} {verdict}: {result.summary}",
                        "ship", release_id, {"gate": result.gate, "passed": result.passed})

    def gate_results(self, release_id: int) -> list[GateResult]:
        with self._tx() as conn:
            rows = conn.execute(sa.select(t.gate_results)
                                .where(t.gate_results.c.release_id == release_id)
                                .order_by(t.gate_results.c.id)).all()
        return [GateResult(r.gate, r.passed, r.summary,
                           tuple(Link(x["title"], x["url"]) for x in r.links), r.duration_s,
                           r.output_tail, r.errored) for r in rows]

    def record_rollout(self, release_id: int, kind: str, published_at: datetime,
                       status: FleetStatus) -> int:
        with self._tx() as conn:
            return conn.execute(t.rollouts.insert().values(
                release_id=release_id, kind=kind, published_at=published_at,
                **_rollout_values(status))).inserted_primary_key[0]

    def update_rollout(self, rollout_id: int, status: FleetStatus) -> None:
        with self._tx() as conn:
            conn.execute(t.rollouts.update().where(t.rollouts.c.id == rollout_id)
                         .values(**_rollout_values(status)))

    def rollouts(self, release_id: int) -> list[Any]:
        with self._tx() as conn:
            return list(conn.execute(sa.select(t.rollouts).where(
                t.rollouts.c.release_id == release_id).order_by(t.rollouts.c.id)).all())

    # --- locks --------------------------------------------------------------------------------

    def take_lock(self, pipeline: str, owner: str, reason: str, auto: bool = False) -> Claim:
        with self._tx() as conn:
            _ensure_pipeline(conn, pipeline)
            now = self.now()
            lock_id = conn.execute(t.locks.insert().values(
                pipeline=pipeline, owner=owner, reason=reason, auto=auto,
                taken_at=now)).inserted_primary_key[0]
            won = conn.execute(t.pipelines.update().where(
                t.pipelines.c.name == pipeline, t.pipelines.c.lock_id.is_(None))
                .values(lock_id=lock_id)).rowcount == 1
            if not won:
                conn.execute(t.locks.delete().where(t.locks.c.id == lock_id))
                holder = _lock(conn, _ensure_pipeline(conn, pipeline).lock_id)
                return Claim(False, lock=holder, reason=holder.describe() if holder else "")
            lock = _lock(conn, lock_id)
            self._event(conn, pipeline, "lock", lock.describe(), owner,
                        data={"auto": auto, "reason": reason})
            return Claim(True, lock=lock)

    def unlock(self, pipeline: str, actor: str, reason: str) -> Lock | None:
        """Release the lock; returns the lock released, or None if there was none."""
        with self._tx() as conn:
            row = _ensure_pipeline(conn, pipeline)
            if row.lock_id is None:
                return None
            released = conn.execute(t.pipelines.update().where(
                t.pipelines.c.name == pipeline, t.pipelines.c.lock_id == row.lock_id)
                .values(lock_id=None)).rowcount == 1
            if not released:
                raise ConcurrentUpdate(f"the lock of {pipeline} changed while unlocking")
            conn.execute(t.locks.update().where(t.locks.c.id == row.lock_id).values(
                released_at=self.now(), released_by=actor, release_reason=reason))
            lock = _lock(conn, row.lock_id)
            self._event(conn, pipeline, "unlock", f"unlocked by {actor}: {reason}", actor,
                        data={"lock_id": row.lock_id})
            return lock

    def locks(self, pipeline: str, limit: int = 20) -> list[Lock]:
        with self._tx() as conn:
            ids = conn.execute(sa.select(t.locks.c.id).where(t.locks.c.pipeline == pipeline)
                               .order_by(t.locks.c.id.desc())
                               .limit(_limit(limit))).scalars().all()
            return [lock for i in ids if (lock := _lock(conn, i))]

    # --- rollbacks ------------------------------------------------------------------------

    def begin_rollback(self, pipeline: str, from_id: int, to_id: int, actor: str, reason: str,
                       auto: bool, breach_at: datetime | None = None) -> Claim:
        """Claim the pipeline's one rollback slot, if `from_id` is still what is live.
        The loser is told which rollback won."""
        with self._tx() as conn:
            _ensure_pipeline(conn, pipeline)
            now = self.now()
            rollback_id = conn.execute(t.rollbacks.insert().values(
                pipeline=pipeline, from_id=from_id, to_id=to_id, actor=actor, reason=reason,
                auto=auto, breach_at=breach_at, started_at=now,
                outcome="running")).inserted_primary_key[0]
            won = conn.execute(t.pipelines.update().where(
                t.pipelines.c.name == pipeline, t.pipelines.c.rollback_id.is_(None),
                t.pipelines.c.live_id == from_id).values(rollback_id=rollback_id)).rowcount == 1
            if not won:
                conn.execute(t.rollbacks.delete().where(t.rollbacks.c.id == rollback_id))
                winner = _winning_rollback(conn, pipeline, from_id)
                why = (f"rollback by {winner.actor} ({'auto' if winner.auto else 'manual'}) "
                       f"already {'running' if winner.outcome == 'running' else 'done'}"
                       if winner else "the live release changed")
                return Claim(False, rollback=winner, reason=why)
            rollback = _rollback(conn, rollback_id)
            names = _release(conn, from_id), _release(conn, to_id)
            self._event(conn, pipeline, "rollback",
                        f"rollback {names[0].name} → {names[1].name} by {actor}: {reason}",
                        actor, from_id, {"rollback_id": rollback_id, "auto": auto,
                                         "to": to_id, "owner": this_process()})
            return Claim(True, rollback=rollback)

    def finish_rollback(self, rollback_id: int, ok: bool, actor: str, note: str = "") -> Rollback:
        """Close the rollback. On success the target is live again and every release that
        went live after it is marked rolled back."""
        with self._tx() as conn:
            rollback = _rollback(conn, rollback_id)
            now = self.now()
            conn.execute(t.rollbacks.update().where(t.rollbacks.c.id == rollback_id)
                         .values(finished_at=now, outcome="done" if ok else "failed"))
            values: dict[str, Any] = {"rollback_id": None}
            if ok:
                values["live_id"] = rollback.to_id
                self._roll_back_releases_after(conn, rollback, actor)
                conn.execute(t.live_history.insert().values(
                    pipeline=rollback.pipeline, release_id=rollback.to_id, since=now,
                    via="rollback"))
            conn.execute(t.pipelines.update().where(t.pipelines.c.name == rollback.pipeline)
                         .values(**values))
            target = _release(conn, rollback.to_id)
            message = (f"rolled back to {target.name}" if ok
                       else f"rollback to {target.name} failed: {note}")
            self._event(conn, rollback.pipeline, "rollback_done" if ok else "rollback_failed",
                        message, actor, rollback.from_id, {"rollback_id": rollback_id})
            return _rollback(conn, rollback_id)

    def _roll_back_releases_after(self, conn: Connection, rollback: Rollback, actor: str) -> None:
        history = _live_history(conn, rollback.pipeline)
        target_since = max((e.since for e in history if e.release_id == rollback.to_id),
                           default=None)
        undone = {e.release_id for e in history
                  if target_since is None or e.since > target_since} | {rollback.from_id}
        for release_id in sorted(undone - {rollback.to_id}):
            release = _release(conn, release_id)
            if release and release.state in (State.LIVE, State.WATCHING, State.DONE):
                self._move(conn, release_id, State.ROLLED_BACK, actor,
                           reason=f"rolled back to #{_release(conn, rollback.to_id).number}")

    def rollbacks(self, pipeline: str, limit: int = 50) -> list[Rollback]:
        with self._tx() as conn:
            ids = conn.execute(sa.select(t.rollbacks.c.id).where(
                t.rollbacks.c.pipeline == pipeline).order_by(t.rollbacks.c.id.desc())
                .limit(_limit(limit))).scalars().all()
            return [r for i in ids if (r := _rollback(conn, i))]

    def live_history(self, pipeline: str) -> list[LiveEntry]:
        with self._tx() as conn:
            return _live_history(conn, pipeline)

    # --- events -----------------------------------------------------------------------------

    def event(self, pipeline: str, kind: str, message: str, actor: str = "ship",
              release_id: int | None = None, data: dict[str, Any] | None = None) -> None:
        with self._tx() as conn:
            self._event(conn, pipeline, kind, message, actor, release_id, data)

    def _event(self, conn: Connection, pipeline: str, kind: str, message: str, actor: str,
               release_id: int | None = None, data: dict[str, Any] | None = None) -> None:
        conn.execute(t.events.insert().values(
            self._event_row(pipeline, kind, message, actor, release_id, data)))

    def _event_row(self, pipeline: str, kind: str, message: str, actor: str,
                   release_id: int | None = None,
                   data: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"at": self.now(), "pipeline": pipeline, "release_id": release_id,
                "kind": kind, "actor": actor, "message": message, "data": data or {}}

    def events(self, pipeline: str, release_id: int | None = None,
               limit: int = 100) -> list[Event]:
        if release_id is not None and not in_range(release_id):
            return []
        query = sa.select(t.events).where(t.events.c.pipeline == pipeline)
        if release_id is not None:
            query = query.where(t.events.c.release_id == release_id)
        with self._tx() as conn:
            rows = conn.execute(query.order_by(t.events.c.id.desc())
                                .limit(_limit(limit))).all()
        return [Event(r.id, r.at, r.pipeline, r.release_id, r.kind, r.actor, r.message,
                      r.data or {}) for r in reversed(rows)]

    def latest_event_at(self) -> datetime | None:
        """The newest moment the store knows of (pipeline time never runs backwards)."""
        with self._tx() as conn:
            return conn.execute(sa.select(sa.func.max(t.events.c.at))).scalar()

    def halts_in_a_row(self, pipeline: str, kinds: tuple[str, ...] = ("gate", "rollout")) -> int:
        """How many of the newest finished release attempts were halted by a gate or a
        failed rollout (a lock is a person's decision, not a stall). A superseded release
        was never judged: it neither counts nor breaks the row."""
        count = 0
        for release in self.releases(pipeline, limit=100):
            if release.state in IN_FLIGHT | {State.QUEUED, State.SUPERSEDED}:
                continue
            if release.state != State.HALTED or release.halted_by not in kinds:
                break
            count += 1
        return count


    # --- ship serve: webhook deliveries and notice references ---------------------------
    # Added with `ship serve`: GitHub intake dedupes deliveries; the Slack and GitHub
    # notifiers keep, per release, the message or deployment they update.

    def delivery_seen(self, pipeline: str, delivery_id: str) -> bool:
        """Whether a webhook delivery already queued merges on this pipeline."""
        with self._tx() as conn:
            return _delivery_seen(conn, pipeline, delivery_id)

    def requeue_merges(self, release_id: int, actor: str = "ship") -> int:
        """Queue a stopped release's commits again, for the next release (`ship serve` was
        stopped before the release could ship), and free the pipeline if the release still
        holds it (one stopped while queued does: `move` frees it only from building on).
        Returns how many commits."""
        with self._tx() as conn:
            release = _release(conn, release_id)
            if release is None or release.state in SHIPPED | IN_FLIGHT:
                raise StoreError(f"release {release_id} is running, shipped or unknown")
            return self._requeue(conn, release, actor)

    def _requeue(self, conn: Connection, release: Release, actor: str) -> int:
        conn.execute(t.pipelines.update().where(t.pipelines.c.in_flight_id == release.id)
                     .values(in_flight_id=None))
        count = conn.execute(t.merges.update().where(t.merges.c.release_id == release.id)
                             .values(release_id=None)).rowcount
        self._event(conn, release.pipeline, "requeued", f"{count} commit(s) of "
                    f"{release.name} queued again for the next release", actor, release.id)
        return count

    def notice_ref(self, release_id: int, notifier: str) -> NoticeRef | None:
        with self._tx() as conn:
            return _notice_ref(conn, release_id, notifier)

    def keep_notice_ref(self, release_id: int, notifier: str, ref: str,
                        data: dict[str, Any]) -> NoticeRef:
        """Remember where a release's notices go. The first kept wins: the one returned."""
        try:
            with self._tx() as conn:
                kept = _notice_ref(conn, release_id, notifier)
                if kept is not None:
                    return kept
                conn.execute(t.notice_refs.insert().values(
                    release_id=release_id, notifier=notifier, ref=ref, data=data,
                    created_at=self.now()))
                return NoticeRef(release_id, notifier, ref, data)
        except sa.exc.IntegrityError:  # another process kept one between our read and write
            kept = self.notice_ref(release_id, notifier)
            if kept is None:
                raise
            return kept

    # --- crash safety: which process drives what -------------------------------------------
    # One process drives a release (or a running rollback) at a time. Every claim of one —
    # queueing it, starting a flow run on it, taking it over after a crash — writes an event
    # naming the process, so that a process started later can tell a release whose driver is
    # gone from one that another process still drives (orchestrator/reconcile.py).

    def record_run(self, release_id: int, flow: str, flow_run_id: str | None,
                   rollback_id: int | None = None) -> None:
        """A flow run of this process started driving the release (with `rollback_id`: its
        rollback)."""
        owner = this_process()
        with self._tx() as conn:
            release = _release(conn, release_id)
            if release is None:
                raise StoreError(f"no release with id {release_id}")
            if flow_run_id and rollback_id is None:
                conn.execute(t.releases.update().where(t.releases.c.id == release_id)
                             .values(flow_run_id=flow_run_id))
            run = f" {flow_run_id[:8]}" if flow_run_id else ""
            self._event(conn, release.pipeline, "flow_run",
                        f"{release.name} {flow} run{run} driven by {describe_process(owner)}",
                        "ship", release_id, {"flow": flow, "flow_run_id": flow_run_id,
                                             "rollback_id": rollback_id, "owner": owner})

    def driver(self, release_id: int, rollback_id: int | None = None) -> Driver | None:
        """Who drives the release (or its rollback): the newest claim on it."""
        with self._tx() as conn:
            return _driver(conn, release_id, rollback_id)

    def take_over(self, release_id: int, seen: Driver | None, why: str,
                  rollback_id: int | None = None) -> bool:
        """Claim a release (or its rollback) whose driver is gone, if `seen` is still its
        newest claim: of two processes reconciling at once, exactly one wins."""
        with self._tx() as conn:
            _serialise(conn, release_id)
            current = _driver(conn, release_id, rollback_id)
            if (current and current.event_id) != (seen and seen.event_id):
                return False
            release = _release(conn, release_id)
            what = release.name + (f" (its rollback {rollback_id})" if rollback_id else "")
            owner = this_process()
            self._event(conn, release.pipeline, "take_over",
                        f"{what} taken over by {describe_process(owner)}: {why}", "reconcile",
                        release_id, {"rollback_id": rollback_id, "owner": owner,
                                     "previous": current.owner if current else None})
            return True

    def stop_orphan(self, release_id: int, to: State, reason: str, halted_by: str | None = None,
                    actor: str = "reconcile") -> tuple[Release, int]:
        """Stop a release its driver left (failed or halted) and queue its commits again, in
        one transaction: no crash between the two can lose a merge. Returns the release and
        how many commits were queued again."""
        with self._tx() as conn:
            release = self._move(conn, release_id, to, actor, reason, halted_by)
            return release, self._requeue(conn, release, actor)

    def mark_overdue(self, release_id: int, stage: str, since: datetime, message: str,
                     data: dict[str, Any]) -> bool:
        """Record that a release overstayed a stage's deadline. True only the first time for
        this stay, whichever process notices, so that on-call is paged once."""
        stay = {"stage": stage, "since": since.isoformat()}
        with self._tx() as conn:
            _serialise(conn, release_id)
            seen = conn.execute(sa.select(t.events.c.data).where(
                t.events.c.release_id == release_id, t.events.c.kind == "overdue")).scalars()
            if any({k: (d or {}).get(k) for k in stay} == stay for d in seen):
                return False
            release = _release(conn, release_id)
            self._event(conn, release.pipeline, "overdue", message, "ship", release_id,
                        {**data, **stay})
            return True


# --- helpers -------------------------------------------------------------------------------


CLAIMS = ("queued", "flow_run", "take_over", "rollback")  # events that name a driver


@dataclass(frozen=True)
class Driver:
    """The newest claim on a release (or its rollback): the process that made it, and the
    flow run, when it was one."""

    event_id: int
    owner: dict[str, Any]
    flow_run_id: str | None
    at: datetime


def this_process() -> dict[str, Any]:
    """Who is writing: host, pid, and when the pid started (pids are reused)."""
    stat = process_stat(os.getpid())
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": stat and stat[1]}


def process_stat(pid: int) -> tuple[str, int] | None:
    """A process's state letter (Z: a zombie) and when it started, in clock ticks since
    boot (Linux /proc); None when there is no such process or no /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0], int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def describe_process(owner: dict[str, Any]) -> str:
    return f"pid {owner.get('pid')} on {owner.get('host')}"


def _driver(conn: Connection, release_id: int, rollback_id: int | None) -> Driver | None:
    rows = conn.execute(sa.select(t.events.c.id, t.events.c.data, t.events.c.at).where(
        t.events.c.release_id == release_id, t.events.c.kind.in_(CLAIMS))
        .order_by(t.events.c.id.desc())).all()
    for row in rows:
        data = row.data or {}
        if data.get("owner") and data.get("rollback_id") == rollback_id:
            return Driver(row.id, data["owner"], data.get("flow_run_id"), row.at)
    return None


def _serialise(conn: Connection, release_id: int) -> None:
    """Concurrent claims on one release take turns (SQLite's BEGIN IMMEDIATE already
    serialises every write)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(7412, :key)"), {"key": release_id})


def _engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = sa.engine.make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # we issue BEGIN ourselves, below
            dbapi_connection.execute("PRAGMA journal_mode=WAL")
            dbapi_connection.execute("PRAGMA busy_timeout=30000")

        @sa.event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            # Take the write lock up front: a deferred transaction that reads and then
            # writes can fail at once under contention instead of waiting its turn.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


def _rollout_values(status: FleetStatus) -> dict[str, Any]:
    return {"hosts": status.hosts, "started": status.started, "converged": status.converged,
            "failed": status.failed, "first_request_at": status.first_request_at,
            "all_started_at": status.all_started_at, "half_at": status.half_at,
            "p95_at": status.p95_at, "converged_at": status.converged_at,
            "failures": [{"host": f.host, "reason": f.reason} for f in status.failures]}


def _ensure_pipeline(conn: Connection, name: str, lock: bool = False) -> Any:
    """The pipeline's row, created if new. With `lock`, held until the transaction ends
    (PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises every write)."""
    query = sa.select(t.pipelines).where(t.pipelines.c.name == name)
    query = query.with_for_update() if lock else query
    row = conn.execute(query).first()
    if row is None:
        insert = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)
        # Two processes may create the same pipeline at once: the second changes nothing.
        conn.execute(insert(t.pipelines).values(name=name).on_conflict_do_nothing())
        row = conn.execute(query).one()
    return row


def _unchanged(column: Any, read: Any) -> Any:
    """The compare of a compare-and-set: the column still holds what was read."""
    return column.is_(None) if read is None else column == read


def _flights(conn: Connection, pipeline: str) -> tuple[Release, ...]:
    rows = conn.execute(sa.select(t.releases).where(
        t.releases.c.pipeline == pipeline,
        t.releases.c.state.in_([s.value for s in HOLDS_PIPELINE]))
        .order_by(t.releases.c.number.desc())).all()
    return tuple(_to_release(r) for r in rows)


def _overtaken_by(conn: Connection, release: Release) -> Release | None:
    """A newer release of the pipeline that has been promoted (rolled out, live, or rolled
    back since): this one, older, would only take the fleet back."""
    reached = [s.value for s in (State.PROMOTING, *SHIPPED, State.ROLLED_BACK)]
    row = conn.execute(sa.select(t.releases).where(
        t.releases.c.pipeline == release.pipeline, t.releases.c.number > release.number,
        t.releases.c.state.in_(reached)).order_by(t.releases.c.number.desc()).limit(1)).first()
    return _to_release(row) if row else None


def in_range(number: int) -> bool:
    """Whether `number` can name a row: 1..ID_MAX (ids and release numbers start at 1)."""
    return 1 <= number <= ID_MAX


def _limit(limit: int) -> int:
    """A row count for LIMIT: a negative one means none (not "all", as on SQLite)."""
    return max(0, min(limit, ID_MAX))


def _delivery_seen(conn: Connection, pipeline: str, delivery_id: str) -> bool:
    return conn.execute(sa.select(t.merges.c.id).where(
        t.merges.c.pipeline == pipeline, t.merges.c.delivery_id == delivery_id)
        .limit(1)).first() is not None


def _recorded_shas(conn: Connection, pipeline: str, shas: list[str]) -> set[str]:
    found: set[str] = set()
    for at in range(0, len(shas), 500):  # SQLite binds at most 999 values in old builds
        found.update(conn.execute(sa.select(t.merges.c.sha).where(
            t.merges.c.pipeline == pipeline,
            t.merges.c.sha.in_(shas[at:at + 500]))).scalars())
    return found


def _release(conn: Connection, release_id: int | None) -> Release | None:
    if release_id is None or not in_range(release_id):
        return None
    row = conn.execute(sa.select(t.releases).where(t.releases.c.id == release_id)).first()
    return _to_release(row) if row else None


def _to_release(row: Any) -> Release:
    commits = tuple(Commit(c["sha"], c.get("author", ""), c.get("message", ""),
                           datetime.fromisoformat(c["merged_at"]) if c.get("merged_at") else None)
                    for c in row.commits)
    slug = Slug(row.slug_id, row.slug_uri or "", build=row.build) if row.slug_id else None
    times = {k: datetime.fromisoformat(v) for k, v in (row.stage_times or {}).items()}
    return Release(row.id, row.pipeline, row.number, State(row.state), row.sha, commits, slug,
                   times, row.reason, row.halted_by, row.created_at, row.preprod_slot)


def _lock(conn: Connection, lock_id: int | None) -> Lock | None:
    if lock_id is None:
        return None
    r = conn.execute(sa.select(t.locks).where(t.locks.c.id == lock_id)).first()
    return Lock(r.id, r.pipeline, r.owner, r.reason, r.auto, r.taken_at, r.released_at,
                r.released_by) if r else None


def _rollback(conn: Connection, rollback_id: int | None) -> Rollback | None:
    if rollback_id is None:
        return None
    r = conn.execute(sa.select(t.rollbacks).where(t.rollbacks.c.id == rollback_id)).first()
    return Rollback(r.id, r.pipeline, r.from_id, r.to_id, r.actor, r.reason, r.auto,
                    r.breach_at, r.started_at, r.finished_at, r.outcome) if r else None


def _winning_rollback(conn: Connection, pipeline: str, from_id: int) -> Rollback | None:
    """The rollback running now, else the newest one away from `from_id`."""
    active = conn.execute(sa.select(t.pipelines.c.rollback_id)
                          .where(t.pipelines.c.name == pipeline)).scalar()
    if active is not None:
        return _rollback(conn, active)
    newest = conn.execute(sa.select(t.rollbacks.c.id).where(
        t.rollbacks.c.pipeline == pipeline, t.rollbacks.c.from_id == from_id)
        .order_by(t.rollbacks.c.id.desc()).limit(1)).scalar()
    return _rollback(conn, newest)


def _live_history(conn: Connection, pipeline: str) -> list[LiveEntry]:
    rows = conn.execute(
        sa.select(t.live_history, t.releases.c.number, t.releases.c.state)
        .join(t.releases, t.releases.c.id == t.live_history.c.release_id)
        .where(t.live_history.c.pipeline == pipeline)
        .order_by(t.live_history.c.since, t.live_history.c.id)).all()
    return [LiveEntry(r.release_id, r.number, State(r.state), r.since, r.via) for r in rows]


def _notice_ref(conn: Connection, release_id: int, notifier: str) -> NoticeRef | None:
    row = conn.execute(sa.select(t.notice_refs).where(
        t.notice_refs.c.release_id == release_id, t.notice_refs.c.notifier == notifier)).first()
    return NoticeRef(row.release_id, row.notifier, row.ref, row.data or {}) if row else None
