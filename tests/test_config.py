"""pipelines.yaml: the root file loads, and every malformed file is refused with a message
that names the problem, its field path and its line."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from orchestrator import config
from shiptypes import ProviderContext
from tests.conftest import ROOT

VALID = textwrap.dedent("""\
    version: 1
    pipelines:
      us:
        region: us-east-1
        repo: {name: example/chat, branch: main}
        build: {type: sim, duration: 4m}
        ci: {type: sim, name: ci, duration: 5m}
        preprod: {name: preprod-us, fleet: {driver: sim, hosts: 1}}
        gates:
          - {type: sim, name: boot, duration: 20s}
          - {type: sim, name: synthetics}
        fleet: {driver: sim, hosts: 300}
        rollout: {stagger: 2m, drain_timeout: 30s, keep_releases: 5}
        heartbeat:
          source: {type: sim}
          window: 1m
          watch: 20m
          metrics:
            - name: messages_created
              query: messages.created
              min_ratio: 0.6
        rollback: {auto: true, lookback_minutes: 20}
        stall: {halts: 3}
        notify:
          links:
            Dashboard: "https://grafana.example.com/d/x?region={region}&release={release}"
    """)


def _variant(old: str, new: str) -> str:
    assert old in VALID, old
    return VALID.replace(old, new, 1)


def test_the_valid_example_loads_with_typed_values() -> None:
    loaded = config.parse(VALID)
    us = loaded.pipeline("us")
    assert us.name == "us"
    assert us.build.duration == 240.0
    assert us.rollout.stagger == 120.0
    assert [g.name for g in us.gates] == ["boot", "synthetics"]
    assert us.heartbeat.metrics[0].min_ratio == 0.6
    assert us.rollback.lookback_minutes == 20


def test_the_root_pipelines_file_has_three_independent_regions() -> None:
    loaded = config.load(ROOT / "pipelines.yaml")
    assert set(loaded.pipelines) == {"us", "eu", "au"}
    regions = {p.region for p in loaded.pipelines.values()}
    assert len(regions) == 3
    assert all(p.fleet.hosts >= 100 for p in loaded.pipelines.values())


def test_defaults_apply_where_the_file_is_silent() -> None:
    loaded = config.parse(VALID.replace("        rollback: {auto: true, lookback_minutes: 20}\n",
                                        "").replace("        stall: {halts: 3}\n", ""))
    us = loaded.pipeline("us")
    assert us.rollback.lookback_minutes == 20.0 and us.rollback.auto
    assert us.stall.halts == 3
    assert us.rollout.max_failed_share == 0.05


def test_unknown_pipeline_names_the_known_ones() -> None:
    with pytest.raises(config.UnknownPipeline, match=r"'mars'.*known: us"):
        config.parse(VALID).pipeline("mars")


def test_json_schema_describes_pipelines_and_providers() -> None:
    schema = config.json_schema()
    text = json.dumps(schema)
    assert schema["title"] == "ship pipelines.yaml"
    assert "pipelines" in schema["properties"]
    assert "SimGateConfig" in text and "SimFleetConfig" in text


# (name, yaml text, substrings the message must hold, line the problem is on)
MALFORMED = [
    ("unknown top-level key", VALID + "pipeline: {}\n", ["pipeline", "unknown field"], 27),
    ("typo in a pipeline key", _variant("    region: us-east-1", "    regoin: us-east-1"),
     ["pipelines.us.regoin", "unknown field"], 4),
    ("typo in a nested key", _variant("branch: main", "brnch: main"),
     ["pipelines.us.repo.brnch", "unknown field"], 5),
    ("typo in a gate key", _variant("duration: 20s}", "durration: 20s}"),
     ["pipelines.us.gates[0].durration", "unknown field"], 10),
    ("typo in rollout", _variant("keep_releases: 5", "keep_release: 5"),
     ["pipelines.us.rollout.keep_release", "unknown field"], 13),
    ("typo in heartbeat", _variant("      watch: 20m", "      wacth: 20m"),
     ["pipelines.us.heartbeat.wacth", "unknown field"], 17),
    ("typo in a metric", _variant("min_ratio: 0.6", "min_raito: 0.6"),
     ["pipelines.us.heartbeat.metrics[0].min_raito", "unknown field"], 21),
    ("missing region", _variant("    region: us-east-1\n", ""), ["pipelines.us.region", "required"],
     3),
    ("missing fleet", _variant("    fleet: {driver: sim, hosts: 300}\n", ""),
     ["pipelines.us.fleet", "required"], 3),
    ("missing heartbeat metrics", _variant(
        "      metrics:\n        - name: messages_created\n          query: messages.created\n"
        "          min_ratio: 0.6\n", ""), ["pipelines.us.heartbeat.metrics", "required"], 14),
    ("empty metric list", _variant(
        "      metrics:\n        - name: messages_created\n          query: messages.created\n"
        "          min_ratio: 0.6\n", "      metrics: []\n"),
     ["pipelines.us.heartbeat.metrics", "at least 1"], 18),
    ("unknown gate type", _variant("{type: sim, name: boot", "{type: smoke, name: boot"),
     ["pipelines.us.gates[0]", "smoke"], 10),
    ("gate without type", _variant("{type: sim, name: synthetics}", "{name: synthetics}"),
     ["pipelines.us.gates[1]", "type"], 11),
    ("unknown fleet driver", _variant("{driver: sim, hosts: 300}", "{driver: k8s, hosts: 300}"),
     ["pipelines.us.fleet", "k8s"], 12),
    ("negative duration", _variant("duration: 4m}", "duration: -4m}"),
     ["pipelines.us.build.duration", "negative"], 6),
    ("duration with a bad unit", _variant("stagger: 2m", "stagger: 2 weeks"),
     ["pipelines.us.rollout.stagger", "not a duration"], 13),
    ("duration as a boolean", _variant("watch: 20m", "watch: yes"),
     ["pipelines.us.heartbeat.watch", "duration"], 17),
    ("hosts not a number", _variant("hosts: 300}", "hosts: many}"),
     ["pipelines.us.fleet.hosts", "integer"], 12),
    ("zero hosts", _variant("hosts: 300}", "hosts: 0}"),
     ["pipelines.us.fleet.hosts", "greater than or equal to 1"], 12),
    ("threshold above one", _variant("min_ratio: 0.6", "min_ratio: 1.5"),
     ["pipelines.us.heartbeat.metrics[0].min_ratio", "less than or equal to 1"], 21),
    ("lookback of zero", _variant("lookback_minutes: 20", "lookback_minutes: 0"),
     ["pipelines.us.rollback.lookback_minutes", "greater than 0"], 22),
    ("stall of zero halts", _variant("halts: 3", "halts: 0"),
     ["pipelines.us.stall.halts", "greater than or equal to 1"], 23),
    ("max failed share above one", _variant("keep_releases: 5", "keep_releases: 5, "
                                                                "max_failed_share: 2"),
     ["pipelines.us.rollout.max_failed_share", "less than or equal to 1"], 13),
    ("keep no releases", _variant("keep_releases: 5", "keep_releases: 0"),
     ["pipelines.us.rollout.keep_releases", "greater than or equal to 1"], 13),
    ("auto not a boolean", _variant("auto: true", "auto: sometimes"),
     ["pipelines.us.rollback.auto", "boolean"], 22),
    ("repo without owner", _variant("name: example/chat", "name: chat"),
     ["pipelines.us.repo.name", "pattern"], 5),
    ("unknown link placeholder", _variant("release={release}", "release={relase}"),
     ["pipelines.us.notify.links.Dashboard", "relase"], 26),
    ("two gates with one name", _variant("name: synthetics}", "name: boot}"),
     ["pipelines.us", "'boot' is used twice"], 3),
    ("a gate named like ci", _variant("name: synthetics}", "name: ci}"),
     ["pipelines.us", "'ci' is used twice"], 3),
    ("pre-prod url naming no slot", _variant(
        "preprod: {name: preprod-us,", "train: {in_flight: 2}\n    preprod: {url: "
        "'https://preprod.example.com', name: preprod-us,"), ["pipelines.us", "{slot}"], 3),
    ("aws pre-prod tags naming no slot", _variant(
        "preprod: {name: preprod-us, fleet: {driver: sim, hosts: 1}}",
        "train: {in_flight: 2}\n    preprod: {fleet: {driver: aws, tags: {role: preprod}, "
        "slugs: {bucket: slugs}}}"), ["pipelines.us", "preprod.fleet", "{slot}"], 3),
    ("bad pipeline name", _variant("  us:\n", "  US East:\n"), ["pipelines", "lowercase"], 2),
    ("pipelines is a list", "version: 1\npipelines:\n  - us\n",
     ["pipelines", "dictionary"], 2),
    ("no pipelines", "version: 1\npipelines: {}\n", ["pipelines", "at least 1"], 2),
    ("wrong version", VALID.replace("version: 1", "version: 2"), ["version", "1"], 1),
    ("duplicate key",
     _variant("    build: {type: sim", "    region: eu-west-1\n    build: {type: sim"),
     ["duplicate key 'region'", "first on line 4"], 6),
    ("broken YAML", _variant("gates:\n", "gates: [\n"), ["invalid YAML"], None),
    ("a tab for indentation", _variant("    region: us-east-1", "\tregion: us-east-1"),
     ["invalid YAML"], 4),
    ("not a mapping", "- just\n- a list\n", ["must be a mapping"], 1),
    ("empty file", "", ["must be a mapping"], 1),
]


@pytest.mark.parametrize(("text", "expected", "line"), [c[1:] for c in MALFORMED],
                         ids=[c[0] for c in MALFORMED])
def test_malformed_files_are_refused_naming_the_problem(text: str, expected: list[str],
                                                        line: int | None) -> None:
    with pytest.raises(config.ConfigError) as caught:
        config.parse(text, "pipelines.yaml")
    message = str(caught.value)
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"
    assert message.startswith("pipelines.yaml")
    if line is not None:
        lines = {p.line for p in caught.value.problems}
        assert line in lines, f"expected line {line}, got {lines}: {message}"


def test_there_are_at_least_thirty_malformed_cases() -> None:
    assert len(MALFORMED) >= 30


def test_every_problem_is_reported_at_once() -> None:
    text = _variant("branch: main", "brnch: main").replace("hosts: 300}", "hosts: -1}")
    with pytest.raises(config.ConfigError) as caught:
        config.parse(text)
    paths = {p.path for p in caught.value.problems}
    assert {"pipelines.us.repo.brnch", "pipelines.us.fleet.hosts"} <= paths


def test_a_missing_file_is_named() -> None:
    with pytest.raises(config.ConfigError, match=r"nowhere\.yaml: cannot read"):
        config.load("nowhere.yaml")


def test_each_release_slot_gets_a_pre_prod_of_its_own() -> None:
    """`train.in_flight` above 1: the pre-prod of slot N is other hosts, whatever the driver."""
    from rollout.aws import AwsFleetConfig
    from rollout.local import LocalFleetConfig
    from rollout.sim import SimFleetConfig

    local = LocalFleetConfig(driver="local", hosts=2, root="/srv/preprod", base_port=9000)
    one = local.for_slot(1)
    assert (one.root, one.base_port) == ("/srv/preprod-1", 9002)  # after slot 0's two ports
    assert local.for_slot(0).model_dump() == local.model_dump()
    default = LocalFleetConfig(driver="local")
    context = ProviderContext("us", "local", state_dir=Path("state"))
    roots = [c.default_root(context) for c in (default, default.for_slot(0), default.for_slot(3))]
    assert roots == [Path("state/fleet/us"), Path("state/fleet/us-preprod-0"),
                     Path("state/fleet/us-preprod-3")]  # each its own, the same every time
    aws = AwsFleetConfig(driver="aws", tags={"role": "preprod-{slot}", "app": "chat"},
                         slugs={"bucket": "slugs"})
    assert aws.for_slot(0).tags == {"role": "preprod-0", "app": "chat"}
    assert aws.for_slot(2).tags == {"role": "preprod-2", "app": "chat"}
    assert SimFleetConfig(driver="sim", seed=7).for_slot(2).seed == 9
