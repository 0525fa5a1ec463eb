"""The orchestrator runs a release's gates side by side in threads: the gates must not
serialise each other (no shared lock, no blocking import), so a release waits about as long
as its slowest gate, not the sum of them all."""

from __future__ import annotations

import shlex
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import get_args

from gates import GATES
from shiptypes import Gate, PreprodTarget, ProviderContext, ReleaseRef
from tests.fakehttp import FakeServer, Reply
from tests.gates.conftest import APP, SHA, free_port

COMMIT = f"/repos/example/chat/commits/{SHA}"


def build(config: dict, context: ProviderContext) -> Gate:
    """As the orchestrator does: the config model by its `type`, then `cls(config, context)`."""
    models = {get_args(m.model_fields["type"].annotation)[0]: m for m in GATES}
    model = models[config["type"]]
    return GATES[model](model.model_validate(config), context)


def test_gates_run_side_by_side(context: ProviderContext, release: ReleaseRef,
                                app: PreprodTarget) -> None:
    with FakeServer() as vendor:
        vendor.route("GET", f"{COMMIT}/status", Reply(json={"state": "pending", "statuses": []}))
        pending = {"id": 1, "name": "build", "status": "in_progress", "conclusion": None}
        vendor.route("GET", f"{COMMIT}/check-runs", [
            Reply(json={"check_runs": [pending]}), Reply(json={"check_runs": [pending]}),
            Reply(json={"check_runs": [{**pending, "status": "completed",
                                        "conclusion": "success"}]})])
        vendor.route("POST", "/api/v1/synthetics/tests/trigger/ci", Reply(json={"batch_id": "b"}))
        vendor.route("GET", "/api/v1/synthetics/ci/batch/b", [
            Reply(json={"data": {"status": "in_progress", "results": []}}),
            Reply(json={"data": {"status": "passed", "results": []}})])
        boot_port = free_port()
        configs = [
            {"type": "command", "name": "smoke", "command": "sleep 0.6"},
            {"type": "github_ci", "repo": "example/chat", "api_url": vendor.url,
             "interval": 0.25, "max_interval": 0.25},
            {"type": "datadog_synthetics", "public_ids": ["abc-def-ghi"], "host": vendor.url,
             "interval": 0.5},
            {"type": "http_checks", "name": "slow-checks",
             "checks": [{"path": "/slow"}, {"path": "/slow"}]},
            {"type": "boot", "interval": 0.05,
             "command": f"{shlex.quote(sys.executable)} {APP} --port {boot_port} "
                        "--healthy-after 0.6"},
        ]
        gates = [build(config, context) for config in configs]
        boot_target = PreprodTarget("preprod-us", f"http://127.0.0.1:{boot_port}")
        targets = [app, app, app, app, boot_target]
        began = context.clock.now()
        with ThreadPoolExecutor(len(gates)) as pool:
            results = list(pool.map(lambda g, t: g.run(release, t), gates, targets))
        total = (context.clock.now() - began).total_seconds()

    assert all(r.passed for r in results), results
    durations = sorted(r.duration_s for r in results)
    print(f"gates {[round(d, 2) for d in durations]} s, sum {sum(durations):.2f} s, "
          f"side by side {total:.2f} s")
    assert all(d >= 0.45 for d in durations)  # each gate really waited
    margin = 0.5 * sum(durations[:-1])
    assert total < sum(durations) - margin
