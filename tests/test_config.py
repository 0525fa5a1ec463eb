"""pipelines.yaml: the root file loads, and every malformed file is refused with a message
that names the problem, its field path and its line."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from orchestrator import boundedyaml, config
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


# --- hostile files: every one refused with its line, in bounded time and memory -----------


def _laughs(levels: int = 9) -> str:
    """A "billion laughs" file: a few hundred bytes standing for 10^9 nodes."""
    lines = ["x-l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"x-l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 10)}]" for n in range(1, levels)]
    return "\n".join(lines) + "\n" + VALID


def _in_release_json(value: str) -> str:
    """VALID with a free-form map holding `value` (the tarball builder's release_json)."""
    return _variant("build: {type: sim, duration: 4m}",
                    f"build: {{type: tarball, release_json: {{x: {value}}}}}")


# (name, yaml text, substrings the message must hold, line the problem is on)
HOSTILE = [
    ("NaN stagger", _variant("stagger: 2m", "stagger: .nan"),
     ["pipelines.us.rollout.stagger", "not a finite duration"], 13),
    ("infinite drain timeout", _variant("drain_timeout: 30s", "drain_timeout: .inf"),
     ["pipelines.us.rollout.drain_timeout", "not a finite duration"], 13),
    ("a duration overflowing to infinity", _variant("watch: 20m", 'watch: "1e400m"'),
     ["pipelines.us.heartbeat.watch", "'1e400m' is not a finite duration"], 17),
    ("a negative infinite duration", _variant("duration: 4m}", "duration: -.inf}"),
     ["pipelines.us.build.duration", "not a finite duration"], 6),
    ("a duration beyond a year", _variant("duration: 5m}", "duration: 400d}"),
     ["pipelines.us.ci.duration", "longer than a year"], 7),
    ("NaN ratio", _variant("min_ratio: 0.6", "min_ratio: .nan"),
     ["pipelines.us.heartbeat.metrics[0].min_ratio", "finite number"], 21),
    ("infinite minutes", _variant("lookback_minutes: 20", "lookback_minutes: .inf"),
     ["pipelines.us.rollback.lookback_minutes", "finite number"], 22),
    ("infinite host count", _variant("hosts: 300}", "hosts: .inf}"),
     ["pipelines.us.fleet.hosts", "finite number"], 12),
    ("a huge count", _variant("halts: 3", "halts: 1000000000000"),
     ["pipelines.us.stall.halts", "less than or equal to 1000"], 23),
    ("a stagger as long as the watch", _variant("stagger: 2m", "stagger: 20m"),
     ["pipelines.us.rollout.stagger", "must be shorter than heartbeat.watch",
      "after the watch has ended"], 13),
    ("a watch shorter than the default stagger", _variant(
        "rollout: {stagger: 2m, drain_timeout: 30s, keep_releases: 5}", "rollout: {}").replace(
        "watch: 20m", "watch: 30s"),
     ["pipelines.us.heartbeat.watch", "rollout.stagger (60s) must be shorter"], 17),
    ("billion laughs", _laughs(), ["alias *l3 expands to 11,111 nodes", "billion-laughs"], 5),
    ("billion laughs in a free-form map", _in_release_json("{" + ", ".join(
        [f"l0: &l0 [{', '.join(['lol'] * 10)}]"] +
        [f"l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 10)}]" for n in range(1, 9)]) + "}"),
     ["alias *l3 expands to 11,111 nodes"], 6),
    ("a recursive anchor in a free-form map", _in_release_json("&me [1, *me]"),
     ["alias *me refers to the anchor it is inside"], 6),
    ("a self-referencing mapping", "x-a: &a {b: {c: *a}}\n" + VALID,
     ["alias *a refers to the anchor it is inside"], 1),
    ("10,000-deep nesting", _in_release_json("[" * 10_000 + "]" * 10_000),
     ["nested deeper than 64 levels"], 6),
    ("too many nodes", VALID + "x-big: [" + "1, " * 60_000 + "]\n",
     ["more than 20,000 nodes"], 27),
    ("a mapping as a key", _variant("    region: us-east-1",
                                    "    {a: 1}: x\n    region: us-east-1"),
     ["a mapping cannot be a key"], 4),
    ("a list as a key", _variant("    region: us-east-1", "    ? [a, b]\n    : x\n"
                                 "    region: us-east-1"), ["a list cannot be a key"], 4),
    ("a null byte", _variant("region: us-east-1", "region: us-\0east-1"),
     ["a null byte is not allowed"], 4),
    ("a control character", _variant("region: us-east-1", "region: us-\x07east-1"),
     ["control character U+0007"], 4),
    ("an integer of 5,000 digits", _variant("hosts: 300}", "hosts: " + "9" * 5000 + "}"),
     ["cannot read", "as int"], 12),
    ("an impossible date", _variant("region: us-east-1", "region: 2024-13-45"),
     ["cannot read '2024-13-45' as timestamp"], 4),
]


@pytest.mark.parametrize(("text", "expected", "line"), [c[1:] for c in HOSTILE],
                         ids=[c[0] for c in HOSTILE])
def test_hostile_files_are_refused_with_their_line(text: str, expected: list[str],
                                                   line: int) -> None:
    with pytest.raises(config.ConfigError) as caught:
        config.parse(text, "pipelines.yaml")
    message = str(caught.value)
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"
    assert message.startswith(f"pipelines.yaml:{line}:"), message
    assert "\n" not in message  # one problem, one line


def test_yaml_problems_name_the_column_too() -> None:
    text = _variant("region: us-east-1", "region: us-\0east-1")
    with pytest.raises(config.ConfigError, match=r"^pipelines\.yaml:4:16: a null byte"):
        config.parse(text, "pipelines.yaml")


def test_control_characters_from_the_file_are_escaped_in_messages() -> None:
    text = _variant("  us:\n", '  "us\\e[2J\\ridden":\n')
    with pytest.raises(config.ConfigError) as caught:
        config.parse(text)
    message = str(caught.value)
    assert "\x1b" not in message and "\r" not in message
    assert "us\\x1b[2J\\ridden" in message


# (name, bytes of the file, substrings the message must hold, line the problem is on)
UNDECODABLE = [
    ("UTF-16 with a byte-order mark", VALID.encode("utf-16"),
     ["not UTF-8 text", "UTF-16 byte-order mark"], 1),
    ("UTF-16 without a byte-order mark", VALID.encode("utf-16-le"),
     ["not UTF-8 text", "null bytes from byte offset 1", "UTF-16"], 1),
    ("big-endian UTF-16", VALID.encode("utf-16-be"),
     ["not UTF-8 text", "null bytes from byte offset 0"], 1),
    ("Latin-1", _variant("region: us-east-1", "region: caf\xe9").encode("latin-1"),
     ["not UTF-8 text", "byte 0xe9 at byte offset 43"], 4),
]


@pytest.mark.parametrize(("data", "expected", "line"), [c[1:] for c in UNDECODABLE],
                         ids=[c[0] for c in UNDECODABLE])
def test_files_that_are_not_utf8_are_refused_with_the_offset(
        tmp_path: Path, data: bytes, expected: list[str], line: int) -> None:
    path = tmp_path / "pipelines.yaml"
    path.write_bytes(data)
    with pytest.raises(config.ConfigError) as caught:
        config.load(path)
    message = str(caught.value)
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"
    assert message.startswith(f"{path}:{line}:"), message


def test_a_utf8_byte_order_mark_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "pipelines.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + VALID.encode())
    assert config.load(path).pipeline("us").region == "us-east-1"


def test_a_file_over_the_size_limit_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "pipelines.yaml"
    # Not even YAML past the first line: refused for its size, never parsed.
    path.write_bytes(VALID.encode() + b"\0[" * boundedyaml.MAX_BYTES)
    with pytest.raises(config.ConfigError) as caught:
        config.load(path)
    size = path.stat().st_size
    assert str(caught.value) == (f"{path}: the file is too large ({size:,} bytes; the limit is "
                                 "1,048,576 bytes): a pipelines file is a few KB")


def test_every_number_in_the_schema_is_bounded_both_ways() -> None:
    """NaN and infinity are refused by every model (allow_inf_nan=False); this keeps a new
    field from taking a billion retries or a timeout of 10^300 seconds."""
    unbounded = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if node.get("type") in ("integer", "number") and "const" not in node:
                low = {"minimum", "exclusiveMinimum"} & node.keys()
                high = {"maximum", "exclusiveMaximum"} & node.keys()
                if not (low and high):
                    unbounded.append(where)
            for key, value in node.items():
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")

    walk(config.json_schema(), "")
    assert unbounded == []


# --- the app the hosts run (`app:`) ---------------------------------------------------------

APP = "    app: {command: 'gunicorn -w 2 app:app', health: {path: /healthz, timeout: 20s}}\n"
WITH_APP = _variant("    rollout:", APP + "    rollout:")


@pytest.mark.parametrize("old, new, expected", [
    ("'gunicorn -w 2 app:app'", "'node server.js {prot}'", ["app.command", "prot"]),
    ("path: /healthz", "path: healthz", ["app.health.path", "pattern"]),
    ("path: /healthz", "path: 'http://x/healthz'", ["app.health.path", "pattern"]),
    ("timeout: 20s", "timeout: soon", ["app.health.timeout", "not a duration"]),
    ("timeout: 20s", "timeout: -5s", ["app.health.timeout", "negative"]),
    ("timeout: 20s}", "timeout: 20s}, env: {SHIP_SHA: abc}", ["app.env", "SHIP_SHA"]),
    ("timeout: 20s}", "timeout: 20s}, env: {LISTEN_FDS: '1'}", ["app.env", "LISTEN_FDS"]),
    ("timeout: 20s}", "timeout: 20s}, env: {'BAD NAME': x}", ["app.env", "BAD NAME"]),
    ("'gunicorn -w 2 app:app'", "'gunicorn \"app:app'", ["app.command", "cannot split"]),
])
def test_app_problems_are_refused_naming_the_field(old: str, new: str,
                                                   expected: list[str]) -> None:
    assert old in WITH_APP, old
    with pytest.raises(config.ConfigError) as caught:
        config.parse(WITH_APP.replace(old, new, 1))
    message = str(caught.value)
    assert f"pipelines.us.{expected[0]}" in message and expected[1] in message, message
    assert "pipelines.yaml:13" in message, message  # the app's line


def test_app_durations_parse_and_a_boot_gate_without_command_boots_the_app() -> None:
    text = WITH_APP.replace("{type: sim, name: boot, duration: 20s}", "{type: boot}")
    pipeline = config.parse(text).pipeline("us")
    assert pipeline.app is not None and pipeline.app.health.timeout == 20.0
    boot = pipeline.gates[0]
    assert boot._app is pipeline.app
    assert config.parse(VALID.replace("{type: sim, name: boot, duration: 20s}",
                                      "{type: boot}")).pipeline("us").gates[0]._app is None


def test_the_service_example_validates() -> None:
    pipeline = config.load(ROOT / "examples/service/pipelines.yaml").pipeline("service")
    assert pipeline.app is not None and pipeline.gates[0]._app is pipeline.app
