"""The gates as pipelines.yaml declares them: the README's examples parse, through the same
discriminated union the config loader uses, into the right gate."""

from __future__ import annotations

import pytest
import yaml
from pydantic import TypeAdapter, ValidationError

from gates import GATES
from gates.boot import BootGate
from gates.ci import GitHubCIGate
from gates.command import CommandGate
from gates.datadog_synthetics import DatadogSyntheticsGate
from gates.http_checks import HttpChecksGate
from gates.sim import SimGate, SimGateConfig
from orchestrator.config import GateConfig
from shiptypes import Gate, PreprodTarget, ProviderContext, ReleaseRef, WallClock

EXAMPLES = {
    BootGate: """
type: boot
name: boot
command: "bin/serve --slug {slug_uri} --port {port}"   # omit when pre-prod is deployed
path: /health
expect_status: 200
timeout: 2m
interval: 1s
""",
    GitHubCIGate: """
type: github_ci
name: ci
repo: example/chat
api_url: https://api.github.com      # GitHub Enterprise: https://github.example.com/api/v3
token_env: GITHUB_TOKEN
require: [build, test]
allow_failures: ["coverage/*"]
timeout: 30m
interval: 10s
max_interval: 1m
""",
    HttpChecksGate: """
type: http_checks
name: synthetics
checks:
  - name: status
    path: /api/status
    headers: {Authorization: "Bearer ${PREPROD_TOKEN}"}
    expect:
      status: 200
      contains: '"ok"'
      json: {release.sha: abc1234, items.0.id: 1}
      max_latency: 500ms
    retries: 2
    retry_delay: 2s
  - {name: login, method: POST, path: /login, json: {user: probe}, expect: {status: [200, 302]}}
""",
    DatadogSyntheticsGate: """
type: datadog_synthetics
name: synthetics
public_ids: [abc-def-ghi, jkl-mno-pqr]
start_url: "{base_url}"
timeout: 10m
""",
    CommandGate: """
type: command
name: smoke
command: "make smoke URL={base_url} SHA={sha}"
timeout: 10m
""",
}


@pytest.mark.parametrize("gate_class", list(EXAMPLES))
def test_each_example_builds_its_gate(gate_class: type, context: ProviderContext) -> None:
    config = TypeAdapter(GateConfig).validate_python(yaml.safe_load(EXAMPLES[gate_class]))
    gate = GATES[type(config)](config, context)
    assert isinstance(gate, gate_class)
    assert isinstance(gate, Gate)
    assert gate.name == config.name


def test_every_registered_gate_has_a_default_name() -> None:
    for model in GATES:
        assert model.model_fields["name"].default, model


def test_a_typo_in_a_gate_is_an_error() -> None:
    with pytest.raises(ValidationError, match="Extra inputs"):
        TypeAdapter(GateConfig).validate_python({"type": "command", "comand": "true",
                                                 "command": "true"})


def test_a_simulated_gate_fails_the_same_releases_for_a_seed_and_others_for_another() -> None:
    context = ProviderContext("us", "us-east-1", clock=WallClock())

    def failing(seed: int | None) -> list[int]:
        gate = SimGate(SimGateConfig(type="sim", fail_share=0.3, seed=seed), context)
        return [n for n in range(1, 41)
                if not gate.run(ReleaseRef(n, "us", n, f"{n:040x}"), PreprodTarget("pp")).passed]

    assert failing(1) == failing(1) and failing(None) == failing(None)
    assert len({tuple(failing(s)) for s in (None, 1, 2)}) == 3  # each seed picks its own
    assert 4 <= len(failing(2)) <= 20  # about 30% of 40
