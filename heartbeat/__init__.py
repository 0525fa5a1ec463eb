"""Heartbeat: outcome metric sources behind one protocol (shiptypes.MetricSource), the
detector (rate vs baseline) and the watcher.

To add a source, write its module (a config model with a `type` literal and a class taking
`(config, context)`) and add one line to SOURCES.
"""

from heartbeat.datadog import DatadogSource, DatadogSourceConfig
from heartbeat.local import LocalSource, LocalSourceConfig
from heartbeat.prometheus import PrometheusSource, PrometheusSourceConfig
from heartbeat.sim import SimSource, SimSourceConfig

SOURCES: dict[type, type] = {
    SimSourceConfig: SimSource,
    DatadogSourceConfig: DatadogSource,
    PrometheusSourceConfig: PrometheusSource,
    LocalSourceConfig: LocalSource,
}
