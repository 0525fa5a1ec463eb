"""Fleet drivers behind one protocol (shiptypes.FleetDriver), the host agent and the
stagger strategy.

To add a driver, write its module (a config model with a `driver` literal and a class
taking `(config, rollout_settings, context)`) and add one line to DRIVERS.
"""

from rollout.aws import AwsFleet, AwsFleetConfig
from rollout.local import LocalFleet, LocalFleetConfig
from rollout.sim import SimFleet, SimFleetConfig

DRIVERS: dict[type, type] = {
    SimFleetConfig: SimFleet,
    LocalFleetConfig: LocalFleet,
    AwsFleetConfig: AwsFleet,
}
