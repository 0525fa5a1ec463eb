"""Approval gates: one module per gate, each `run(release, target) -> GateResult`.

To add a gate, write its module (a config model with a `type` literal and a class taking
`(config, context)`) and add one line to GATES.
"""

from gates.boot import BootGate, BootGateConfig
from gates.ci import GitHubCIConfig, GitHubCIGate
from gates.command import CommandGate, CommandGateConfig
from gates.datadog_synthetics import DatadogSyntheticsConfig, DatadogSyntheticsGate
from gates.http_checks import HttpChecksConfig, HttpChecksGate
from gates.sim import SimGate, SimGateConfig

GATES: dict[type, type] = {
    SimGateConfig: SimGate,
    BootGateConfig: BootGate,
    GitHubCIConfig: GitHubCIGate,
    HttpChecksConfig: HttpChecksGate,
    DatadogSyntheticsConfig: DatadogSyntheticsGate,
    CommandGateConfig: CommandGate,
}
