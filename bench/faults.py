"""Faults injected into ship, and what it did about each: vendors misbehaving (Slack,
PagerDuty, GitHub, Datadog answering 500, 429 with Retry-After, nothing in time, slowly, or
with malformed JSON), ship processes SIGKILLed in every stage of a release on a real local
fleet, a host agent SIGKILLed mid-restart under load, and processes racing on the store
(SQLite, and PostgreSQL when one answers at SHIP_TEST_PG_URL), and hostile HTTP requests
to a real `ship serve` (huge chunked bodies, huge pushes, deep JSON, numbers past the store).

    .venv/bin/python bench/faults.py [--only vendors,kills,store,http]

Prints one row per fault: what was injected → what ship did → what was lost or left
inconsistent, which must read "nothing" on every row (the exit code is 1 otherwise). Takes
a few minutes: a vendor that never answers in time is waited out to the last send.
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console
from rich.table import Table

from orchestrator import engine  # noqa: F401 - Prefect settings before Prefect loads
from orchestrator.reconcile import audit
from orchestrator.release import State
from orchestrator.show import plain
from orchestrator.store import Store
from tests.faults.crash import (
    HOST_KILL,
    KILLS,
    CrashWorld,
    kill_a_host_agent,
    kill_and_reconcile,
)
from tests.faults.vendors import (
    FAULTS,
    NOTIFIERS,
    FakeVendors,
    failures_by_notifier,
    vendor_world,
)
from tests.test_flows import deploy

Row = tuple[str, str, list[str]]  # fault, what ship did, what was lost or inconsistent
FAULT_NAMES = {"500": "HTTP 500 on every call", "429": "429 + Retry-After: 1, twice",
               "timeout": "no answer within the timeout", "slow": "slow answers, in time",
               "malformed": "200 with malformed JSON"}


@contextmanager
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="ship-faults-") as workdir:
        yield Path(workdir)


def short(text: str, most: int = 110) -> str:
    return text if len(text) <= most else text[: most - 1] + "…"


def states(store: Store, *numbers: int) -> str:
    found = [store.release_by_number("us", n) for n in numbers]
    return ", ".join(f"#{r.number} {r.state}" for r in found if r)


# --- vendors --------------------------------------------------------------------------------


def notifier_rows(fault: str) -> list[Row]:
    """Every notifier's vendor misbehaving through two releases, the second breaching."""
    with scratch() as workdir, FakeVendors() as vendors:
        for name in NOTIFIERS:
            vendors.faults[name] = fault
        runner, store, _ = vendor_world(workdir, vendors.url, breach=[2])
        began = time.monotonic()
        deploy(runner, 1)
        deploy(runner, 2)
        releases_took = time.monotonic() - began
        drained = runner.ship.close_notifiers(300.0)
        failed = failures_by_notifier(store)
        outboxes = {n.name: getattr(n, "outbox", None)
                    for n in runner.ship.pipeline("us").broadcast.notifiers}
        shipped = (f"{states(store, 1, 2)} (breach), locked; both releases took "
                   f"{releases_took:.1f} s")
        problems = audit(store, "us")
        if states(store, 1, 2) != "#1 done, #2 rolled_back":
            problems.append(f"releases: {states(store, 1, 2)}")
        rows = []
        for name in NOTIFIERS:
            outbox = outboxes[name]
            given_up = len(failed.get(name, []))
            lost = list(problems) + ([] if drained else ["sends left unsent at close"])
            if outbox is not None and outbox.failed != given_up:
                lost.append(f"{outbox.failed} sends given up, {given_up} recorded")
            sends = (f"{given_up} sends gave up after their tries, each recorded "
                     "(notify_failed)" if given_up else "every send delivered")
            did = f"{vendors.calls[name]} calls to it; {sends}; {shipped}"
            rows.append((f"{name}: {FAULT_NAMES[fault]}", did, lost))
        return rows


def ci_row(fault: str) -> Row:
    with scratch() as workdir, FakeVendors() as vendors:
        vendors.faults["github_ci"] = fault
        runner, store, _ = vendor_world(workdir, vendors.url, ci=True)
        release = store.release(deploy(runner, 1).release.id)
        runner.ship.close_notifiers(30.0)
        [ci] = [g for g in store.gate_results(release.id) if g.gate == "ci"]
        verdict = "passed" if ci.passed else ("errored (fail closed)" if ci.errored else "failed")
        did = f"{vendors.calls['github_ci']} calls; gate ci {verdict}: {ci.summary}; " \
              f"#1 {release.state}" + (f" by {release.halted_by}" if release.halted_by else "")
        problems = audit(store, "us")
        expected = State.DONE if fault in ("429", "slow") else State.HALTED
        if release.state != expected or (expected == State.HALTED and not ci.errored):
            problems.append(f"#1 is {release.state}; the gate {verdict}")
        if expected == State.HALTED and store.pipeline_state("us").live is not None:
            problems.append("a release the gate refused reached the fleet")
        return f"github CI: {FAULT_NAMES[fault]}", did, problems


def heartbeat_row(fault: str) -> Row:
    with scratch() as workdir, FakeVendors() as vendors:
        vendors.faults["datadog"] = fault
        runner, store, _ = vendor_world(workdir, vendors.url, datadog=True)
        deploy(runner, 1)
        deploy(runner, 2)
        runner.ship.close_notifiers(30.0)
        held = store.pipeline_state("us").hold_reason
        second = store.release_by_number("us", 2)
        did = (f"{vendors.calls['datadog']} queries; {states(store, 1, 2)}"
               + (f" by {second.halted_by}" if second.halted_by else "")
               + (f"; promotions held: {held}" if held else "; not held at the end"))
        problems = audit(store, "us")
        blind = fault not in ("429", "slow")
        if blind != (second.state == State.HALTED and second.halted_by == "hold"):
            problems.append(f"#2 is {second.state} by {second.halted_by}")
        if blind != bool(held):
            problems.append(f"held: {held}")
        return f"datadog heartbeat: {FAULT_NAMES[fault]}", did, problems


# --- kills --------------------------------------------------------------------------------

EXPECTED = {  # stage → (live after, lock owner, state of #2)
    "building": (1, None, State.FAILED), "preprod": (1, None, State.FAILED),
    "gating": (1, None, State.FAILED), "rollout": (2, None, State.DONE),
    "rollout of a release that fails to boot": (1, None, State.HALTED),
    "watching": (2, None, State.DONE), "rolling back": (1, "tester", State.ROLLED_BACK),
}


def kill_row(stage: str, prefect_api: str) -> Row:
    with scratch() as workdir:
        world = CrashWorld(workdir, prefect_api, KILLS[stage])
        try:
            outcome = kill_and_reconcile(world, stage)
            live, owner, state = EXPECTED[stage]
            at_kill = ", ".join(f"{h['host']} {h['phase']} (on #{h['current_release']}, "
                                f"wants #{h['desired']})" for h in outcome.at_kill)
            decision = outcome.decision()
            second = world.store.release_by_number("us", 2)
            did = (f"hosts at the kill: {at_kill}. reconcile: {decision['action']}: "
                   f"{short(decision.get('detail', ''))}. End: #2 {second.state}"
                   + (f" ({short(second.reason)})" if second.reason else ""))
            problems = world.disagreements(live, owner) + [
                f"{who}: {p}" for who, found in outcome.answer["problems"].items() for p in found]
            if second.state != state:
                problems.append(f"#2 is {second.state}, expected {state}")
            return f"SIGKILL ship mid-{stage}", did, problems
        finally:
            world.close()


def host_kill_row(prefect_api: str) -> Row:
    with scratch() as workdir:
        world = CrashWorld(workdir, prefect_api, HOST_KILL)
        try:
            outcome = kill_a_host_agent(world)
            failures = outcome.load.failures()
            did = (f"host-0's agent restarted, adopted its workers and finished the same "
                   f"restart; {len(outcome.load.outcomes)} requests, {len(failures)} failed; "
                   f"#2 {world.store.release_by_number('us', 2).state}")
            problems = world.disagreements(2) + [f"request failed: {f.error or f.status}"
                                                 for f in failures[:3]]
            if outcome.exit_code != 0 or outcome.started_after != outcome.started_before:
                problems.append("the release or the host's restart did not carry on")
            return "SIGKILL a host agent mid-rolling-restart, under load", did, problems
        finally:
            world.close()


# --- the store ------------------------------------------------------------------------------


def store_rows() -> list[Row]:
    from tests.conftest import _postgres_available, drop_postgres, fresh_postgres_url
    from tests.faults.test_store_concurrency import OPS, WORKERS, found, hammer, tally

    rows = []
    backends: list[tuple[str, Callable[[Path], str]]] = [
        ("SQLite", lambda workdir: f"sqlite:///{workdir}/ship.db")]
    if _postgres_available() is None:
        backends.append(("PostgreSQL", lambda _workdir: fresh_postgres_url()))
    for backend, make_url in backends:
        for kill in (None, 0):
            with scratch() as workdir:
                url = make_url(workdir)
                try:
                    logs = hammer(url, "us", kill=kill)
                    store = Store(url)
                    done, held = tally(logs), found(store, url)
                    slack = 0 if kill is None else 1
                    problems = audit(store, "us") + [
                        f"{what}: {done[what]} won, {held[what]} in the store"
                        for what in ("merges", "releases", "locks", "unlocks", "rollbacks")
                        if not done[what] <= held[what] <= done[what] + slack]
                    store.close()
                finally:
                    if url.startswith("postgresql"):
                        drop_postgres(url)
            what = (f"{WORKERS} processes x {OPS} mixed ops" + (", one SIGKILLed mid-way"
                                                               if kill is not None else ""))
            did = (f"{held['merges']} merges, {held['releases']} releases, {held['locks']} "
                   f"locks ({held['unlocks']} released), {held['rollbacks']} rollbacks; "
                   f"{done['refused']} operations refused or lost a compare-and-set, each "
                   "told why")
            rows.append((f"{backend}: {what}", did, problems))
    return rows


# --- hostile HTTP ---------------------------------------------------------------------------


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


@contextmanager
def peak_rss(pid: int) -> Iterator[list[float]]:
    """Samples the process's RSS every 10 ms; the list holds [before, peak] after."""
    figures = [rss_mb(pid)] * 2
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            figures[1] = max(figures[1], rss_mb(pid))
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield figures
    finally:
        done.set()
        sampler.join()
        figures[1] = max(figures[1], rss_mb(pid))


def flood_row(server: Any, signature: str | None) -> Row:
    """Four concurrent 300 MB chunked POSTs, none of which can be verified."""
    from tests.serve.hostile import post_chunked

    headers = {"X-GitHub-Event": "push"} | ({"X-Hub-Signature-256": signature}
                                           if signature else {})
    with peak_rss(server.process.pid) as rss, ThreadPoolExecutor(4) as pool:
        began = time.monotonic()
        answers = list(pool.map(lambda _: post_chunked(server.url, "/webhooks/github",
                                                       headers, 300 * 2**20), range(4)))
        took = time.monotonic() - began
    statuses = sorted({a.status for a in answers})
    sent = sum(a.sent for a in answers) / 2**20
    what = ("4 concurrent 300 MB chunked POSTs, " + ("a forged signature" if signature
                                                    else "no signature"))
    did = (f"answered {statuses} in {took:.1f} s after the clients sent {sent:.0f} MB in all; "
           f"ship serve RSS {rss[0]:.0f} MB before, {rss[1]:.0f} MB at most during")
    return what, did, server_problems(server, statuses, 401 if signature is None else 413)


def server_problems(server: Any, statuses: list[int], expected: int) -> list[str]:
    problems = [] if statuses == [expected] else [f"answers {statuses}, not {expected}"]
    if not requests.get(f"{server.url}/healthz", timeout=10).ok:
        problems.append("/healthz is not ok")
    if "Traceback" in server.log():
        problems.append("a traceback in the server's log")
    return problems


def push_row(server: Any, commits: int, expected: int) -> Row:
    """A signed push of `commits` commits, with /healthz polled while it is handled."""
    from tests.serve.conftest import push, sha

    shas = [sha(n, f"bench{commits}") for n in range(commits)]
    body = json.dumps(push(shas)).encode()  # encoded first: the poller's figures are the server's
    latencies: list[float] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            began = time.monotonic()
            requests.get(f"{server.url}/healthz", timeout=30)
            latencies.append(time.monotonic() - began)
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    began = time.monotonic()
    answer = server.github(None, body=body)
    took = time.monotonic() - began
    done.set()
    poller.join()
    store = server.store
    # Pending first, then released: a merge a release claims in between is seen twice, never
    # missed.
    queued = ({c.sha for c in store.pending_merges("us", 10_000)}
              | {c.sha for r in store.releases("us", limit=1000) for c in r.commits})
    did = (f"{answer.status_code} in {took:.2f} s ({short(answer.text, 70)}); "
           f"/healthz meanwhile: {len(latencies)} answers, slowest "
           f"{max(latencies) * 1000:.0f} ms; {len(queued & set(shas))} of its commits queued")
    problems = server_problems(server, [answer.status_code], expected)
    if len(queued & set(shas)) != (commits if expected == 200 else 0):
        problems.append(f"{len(queued & set(shas))} of its commits queued")
    return f"signed push of {commits:,} commits", did, problems


def odd_input_rows(server: Any) -> list[Row]:
    from tests.serve.conftest import GITHUB_SECRET, github_signature, press

    deep = b'{"ref": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    sent = {
        "signed push nested 100,000 deep": (server.github(
            None, body=deep, signature=github_signature(GITHUB_SECRET, deep)), 400),
        "release 10^30 in a URL": (requests.get(
            f"{server.url}/pipelines/us/releases/{10**30}", timeout=10), 404),
        "release 10^30 in a Slack button": (server.slack(
            press("ship_rollback", "us", 10**30)), 400),
    }
    return [(what, f"{answer.status_code}: {short(said(answer), 100)}",
             server_problems(server, [answer.status_code], expected))
            for what, (answer, expected) in sent.items()]


def said(answer: requests.Response) -> str:
    """The error a JSON answer gives, or the message of an HTML page."""
    if answer.headers.get("content-type", "").startswith("application/json"):
        return str(answer.json().get("error", answer.text))
    found = re.search(r"<p[^>]*>([^<]*has no[^<]*)</p>", answer.text)
    return html.unescape(found.group(1).strip()) if found else answer.text[:100]


def hostile_http_rows(prefect_api: str) -> list[Row]:
    from tests.serve.conftest import Serving, config_text

    with scratch() as workdir:
        server = Serving(workdir, prefect_api, config_text(pipelines=("us",)))
        try:
            rows = [flood_row(server, None), flood_row(server, "sha256=" + "0" * 64)]
            rows += odd_input_rows(server)
            rows += [push_row(server, 10_000, 413), push_row(server, 2048, 200)]
        finally:
            server.stop()
        return rows


# --- the table ------------------------------------------------------------------------------


# --- processes killed, a person rolling back, hostile config ---------------------------------


def temporary_api_kill_row() -> Row:
    """`ship deploy` SIGKILLed while Prefect's temporary API serves it."""
    import signal

    from tests.faults.test_temporary_api import a_deploy_on_its_own_prefect, alive, temporary_api_of
    from tests.serve.conftest import wait_for

    with scratch() as workdir:
        ship = a_deploy_on_its_own_prefect(workdir)
        api = wait_for(lambda: temporary_api_of(ship.pid), "the temporary API", 180)
        ship.send_signal(signal.SIGKILL)
        ship.wait()
        killed = time.monotonic()
        try:
            wait_for(lambda: not alive(api), "the temporary API to stop", 60)
        except AssertionError:
            return ("ship deploy SIGKILLed while Prefect's temporary API serves it",
                    "the API kept running", [f"Prefect's temporary API (pid {api}) left behind"])
        return ("ship deploy SIGKILLed while Prefect's temporary API serves it",
                f"the API (its child) stopped {time.monotonic() - killed:.1f} s later", [])


def rollback_rows() -> list[Row]:
    """A person's rollback with no ship serve (and no Prefect server), and through one."""
    from rollback_speed import measure

    rows = []
    for serve, target in ((False, 2.0), (True, 0.5)):
        told, whole = measure(1, serve)[0]
        where = "through a running ship serve" if serve else "with no ship serve running"
        problems = [] if told <= target else [f"over the {target} s target"]
        rows.append((f"ship rollback {where}, real local fleet",
                     f"every host told {told:.2f} s after the command started (target ≤ "
                     f"{target} s); the command ended at {whole:.2f} s", problems))
    return rows


def hostile_config_rows() -> list[Row]:
    from config_hostile import hostile_files, validate

    rows = []
    with scratch() as workdir:
        for case, path in hostile_files(workdir).items():
            seconds, peak_mb, code, output = validate(path)
            expected = 0 if case == "valid" else 2
            problems = [] if code == expected and "Traceback" not in output else [
                f"exit {code}: {short(output)}"]
            said_ = short(output.strip().splitlines()[0] if output.strip() else "")
            rows.append((f"ship validate: {case}", f"exit {code} in {seconds:.2f} s, peak "
                         f"{peak_mb:.0f} MB: {said_}", problems))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="vendors,kills,store,http,processes",
                        help="comma-separated: vendors, kills, store, http, processes")
    parts = set(parser.parse_args().only.split(","))
    # The clients log every fault they meet; the table says what came of them.
    for noisy in ("slack_sdk", "prefect"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    rows: list[Row] = []
    began = time.monotonic()
    with prefect_test_harness(server_startup_timeout=120):
        prefect_api = str(PREFECT_API_URL.value())
        if "vendors" in parts:
            for fault in FAULTS:
                rows += notifier_rows(fault)
            rows += [ci_row(fault) for fault in FAULTS]
            rows += [heartbeat_row(fault) for fault in FAULTS]
        if "kills" in parts:
            rows += [kill_row(stage, prefect_api) for stage in KILLS]
            rows.append(host_kill_row(prefect_api))
        if "http" in parts:
            rows += hostile_http_rows(prefect_api)
    if "processes" in parts:
        rows += [temporary_api_kill_row(), *rollback_rows(), *hostile_config_rows()]
    if "store" in parts:
        rows += store_rows()
    table = Table(title="Faults injected into ship", title_justify="left", show_lines=True)
    for column, ratio in (("fault injected", 2), ("what ship did", 5),
                          ("lost or inconsistent", 2)):
        table.add_column(column, ratio=ratio, overflow="fold")
    for fault, did, problems in rows:
        table.add_row(plain(fault), plain(did), plain("; ".join(problems) or "nothing"))
    console = Console(width=max(140, Console().width))
    console.print(table)
    clean = sum(not problems for *_, problems in rows)
    console.print(f"{len(rows)} faults injected; {clean} rows say nothing was lost or left "
                  f"inconsistent ({time.monotonic() - began:.0f} s)")
    return 0 if clean == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
