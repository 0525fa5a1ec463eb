"""Approval gates: one module per gate, each `run(release, target) -> GateResult`.

To add a gate, write its module (a config model with a `type` literal and a class taking
`(config, context)`) and add one line to GATES.
"""

from gates.sim import SimGate, SimGateConfig

GATES: dict[type, type] = {
    SimGateConfig: SimGate,
}
