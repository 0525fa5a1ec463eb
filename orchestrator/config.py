"""pipelines.yaml → typed, validated objects.

Every pipeline is an independent pipeline of one region. Unknown keys, duplicate keys and
unknown link placeholders are errors: a typo must never be silently ignored. Problems are
reported all at once, each with the file, the line and the field path.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import AfterValidator, Field, ValidationError, field_validator, model_validator

from gates import GATES
from gates.boot import BootGateConfig
from heartbeat import SOURCES
from heartbeat.detector import MetricRule
from orchestrator import boundedyaml
from orchestrator.notify.pagerduty import PagerDutyConfig
from orchestrator.problems import ConfigError, Problem, UnknownPipeline
from orchestrator.slugs import BUILDERS
from rollout import DRIVERS
from shiptypes import ProviderConfig, RolloutSettings, Seconds, check_placeholders

DEFAULT_FILE = Path("pipelines.yaml")
LINK_FIELDS = frozenset({"pipeline", "region", "release", "number", "sha", "short_sha", "slug"})


def _union(models: Iterable[type], tag: str) -> Any:
    """A discriminated union of every registered provider's config model."""
    kinds = tuple(models)
    if len(kinds) == 1:
        return kinds[0]
    return Annotated[Union[kinds], Field(discriminator=tag)]  # type: ignore[valid-type]  # noqa: UP007


GateConfig = _union(GATES, "type")
FleetConfig = _union(DRIVERS, "driver")
SourceConfig = _union(SOURCES, "type")
BuildConfig = _union(BUILDERS, "type")


class Repo(ProviderConfig):
    name: str = Field(pattern=r"^[\w.-]+/[\w.-]+$", description="owner/name on GitHub")
    branch: str = Field("main", min_length=1)


class Preprod(ProviderConfig):
    name: str = "preprod"
    url: str | None = Field(None, description="base URL the gates check; {slot} names the "
                            "pre-prod of a release when train.in_flight is above 1")
    fleet: FleetConfig
    timeout: Seconds = Field(600.0, gt=0, description="deadline for pre-prod to converge")


class Heartbeat(ProviderConfig):
    source: SourceConfig
    metrics: list[MetricRule] = Field(min_length=1)
    window: Seconds = Field(60.0, gt=0, description="length of one measurement window")
    watch: Seconds = Field(1200.0, gt=0, description="how long a release is watched")

    @field_validator("metrics")
    @classmethod
    def _unique_metrics(cls, metrics: list[MetricRule]) -> list[MetricRule]:
        _require_unique(m.name for m in metrics)
        return metrics


class Rollback(ProviderConfig):
    auto: bool = True
    lookback_minutes: float = Field(20.0, gt=0, le=525_600,
                                    description="roll back to what was live then")


class Stall(ProviderConfig):
    halts: int = Field(3, ge=1, le=1000, description="halted releases in a row before paging")


class Train(ProviderConfig):
    max_commits: int = Field(50, ge=1, le=10_000,
                             description="commits that ride one release at most")
    in_flight: int = Field(1, ge=1, le=64, description=(
        "releases in flight at once, each with its own pre-prod; with 1, the next release "
        "starts when every host has started the last one. More let a release start as its "
        "merge lands and overtake an older one on the fleet"))
    while_locked: Literal["hold", "halt"] = Field("hold", description=(
        "what `ship serve` does with merges while the pipeline is locked: `hold` builds, "
        "deploys to pre-prod and gates them, and the newest release waits at the door and "
        "promotes at unlock (an older one stands aside: the newer carries its commits); "
        "`halt` starts nothing and halts a release that reaches the door"))


class Deadlines(ProviderConfig):
    """How long a release may stay in one stage before on-call is paged (Flagger's
    progressDeadlineSeconds, per stage), so that a pipeline never stops silently. `watching`
    counts from the end of the watch; `rollback` from the start of a rollback."""

    queued: Seconds = Field(300.0, gt=0)
    building: Seconds = Field(1800.0, gt=0)
    preprod: Seconds = Field(1800.0, gt=0)
    gating: Seconds = Field(3600.0, gt=0, description="gates and CI")
    ready: Seconds = Field(3600.0, gt=0, description=(
        "waiting at the door for a hold to lift; not counted while the pipeline is locked"))
    promoting: Seconds = Field(1800.0, gt=0)
    live: Seconds = Field(300.0, gt=0, description="live, before its watch begins")
    watching: Seconds = Field(600.0, gt=0, description="past the end of the watch")
    rollback: Seconds = Field(900.0, gt=0)


class Misfit(ValueError):
    """Fields that do not fit together; `at` is the field, below the model, to point at."""

    def __init__(self, message: str, at: tuple[str, ...]) -> None:
        super().__init__(message)
        self.at = at


def _link_template(template: str) -> str:
    return check_placeholders(template, LINK_FIELDS)


LinkTemplate = Annotated[str, AfterValidator(_link_template)]


class Delivery(ProviderConfig):
    """How hard a notifier tries: retries on 429 (after Retry-After) and 5xx, with backoff,
    within a total budget. Sending happens off the release's path, so a slow vendor only
    delays its own messages."""

    attempts: int = Field(5, ge=1, le=100,
                          description="tries per message, the first included")
    backoff: float = Field(1.0, gt=0, le=3600,
                           description="real seconds before the first retry; doubles")
    max_wait: float = Field(30.0, gt=0, le=3600, description="the longest wait between tries")
    give_up_after: float = Field(120.0, gt=0, le=86400,
                                 description="real seconds, all tries included")
    request_timeout: float = Field(10.0, gt=0, le=600)


class SlackNotify(Delivery):
    channel: str = Field(min_length=1, description="channel (name or id) for release messages")
    users: dict[str, str] = Field(default_factory=dict,
                                  description="GitHub login → Slack user id, for mentions")
    allow: list[str] = Field(default_factory=list,
                             description="Slack user ids who may press Roll back, Lock, Unlock")
    token_env: str = Field("SLACK_BOT_TOKEN", description="environment variable with the token")
    api_url: str = "https://slack.com/api/"


class GitHubDeployments(Delivery):
    repo: str | None = Field(None, pattern=r"^[\w.-]+/[\w.-]+$",
                             description="owner/name (default: the pipeline's repo)")
    api_url: str = Field("https://api.github.com", description="GitHub Enterprise: .../api/v3")
    token_env: str = Field("GITHUB_TOKEN", description="environment variable with the token")
    environment: LinkTemplate = "production-{region}"
    log_url: LinkTemplate | None = Field(None, description="default: the first notify link")
    environment_url: LinkTemplate | None = None


class Notify(ProviderConfig):
    console: bool = True
    slack: SlackNotify | None = None
    pagerduty: PagerDutyConfig | None = None
    github: GitHubDeployments | None = Field(None, description="GitHub deployment statuses")
    links: dict[str, LinkTemplate] = Field(default_factory=dict,
                                           description="title → URL template")


class AppHealth(ProviderConfig):
    path: str = Field("/healthz", pattern=r"^/[!-~]*$", max_length=1024,
                      description="GET this answers 200 once an instance may take traffic")
    timeout: Seconds = Field(30.0, gt=0, description="an instance not healthy by then fails "
                             "its host (the old one keeps serving)")
    port: Literal["private", "shared"] = Field("private", description=(
        "private: the instance's own port ({port}, or fd 4 when the command has no {port}); "
        "shared: the host's port, for servers that serve one socket only (uvicorn --fd 3): "
        "any instance may answer, so it cannot tell when the new one is up"))


ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
AGENT_ENV = frozenset({"LISTEN_FDS", "LISTEN_PID", "PORT", "SHIP_RELEASE", "SHIP_SHA"})


class AppConfig(ProviderConfig):
    """An unmodified app the hosts run (without `app:`, the example app's own protocol).
    The command gets the host's shared listening socket as systemd passes one (fd 3,
    LISTEN_FDS, LISTEN_PID): gunicorn reads it as is, uvicorn takes `--fd 3`, Node
    `server.listen({fd: 3})`. It is split into words as a shell would (quotes honoured;
    nothing expanded, no pipes) and run in the unpacked slug."""

    command: str = Field(min_length=1, max_length=4096, description=(
        "e.g. `gunicorn -w 3 app:app`; {port} is the instance's private port (also $PORT), "
        "which the app then binds itself; without it the agent passes that port bound, as "
        "fd 4 (LISTEN_FDS=2)"))
    health: AppHealth = AppHealth()
    env: dict[str, str] = Field(default_factory=dict, description=(
        "environment of every instance, beside SHIP_RELEASE, SHIP_SHA and PORT"))

    @field_validator("command")
    @classmethod
    def _words(cls, command: str) -> str:
        check_placeholders(command, frozenset({"port"}))
        try:
            words = shlex.split(command)
        except ValueError as error:
            raise ValueError(f"cannot split the command into words: {error}") from None
        if not words:
            raise ValueError("the command is empty")
        return command

    @field_validator("env")
    @classmethod
    def _names(cls, env: dict[str, str]) -> dict[str, str]:
        for name, value in env.items():
            if not ENV_NAME.fullmatch(name) or name in AGENT_ENV:
                raise ValueError(f"{name!r} is not an environment variable the app may be "
                                 f"given (letters, digits, _; not {', '.join(sorted(AGENT_ENV))})")
            if "\0" in value:
                raise ValueError(f"{name}: a value cannot hold a NUL character")
        return env

    def agent_spec(self) -> dict[str, Any]:
        """What the host agent takes (rollout.agent.AppSpec), in desired.json."""
        return {"command": self.command, "env": dict(self.env),
                "health": {"path": self.health.path, "timeout": self.health.timeout,
                           "port": self.health.port}}


class Pipeline(ProviderConfig):
    name: str = ""
    region: str = Field(min_length=1)
    repo: Repo
    build: BuildConfig
    ci: GateConfig | None = Field(None, description="started with the build, awaited as a gate")
    preprod: Preprod
    gates: list[GateConfig] = Field(default_factory=list)
    fleet: FleetConfig
    app: AppConfig | None = Field(None, description="the app the hosts run")
    rollout: RolloutSettings = RolloutSettings()
    heartbeat: Heartbeat
    rollback: Rollback = Rollback()
    stall: Stall = Stall()
    train: Train = Train()
    deadlines: Deadlines = Deadlines()
    notify: Notify = Notify()

    @model_validator(mode="after")
    def _unique_gates(self) -> Pipeline:
        _require_unique([g.name for g in self.gates] + ([self.ci.name] if self.ci else []))
        return self

    @model_validator(mode="after")
    def _boot_the_app(self) -> Pipeline:
        """A boot gate with no command of its own boots the pipeline's app (gates.boot)."""
        for gate in self.gates:
            if isinstance(gate, BootGateConfig) and gate.command is None:
                gate._app = self.app
        return self

    @model_validator(mode="after")
    def _build_of_repo(self) -> Pipeline:
        """Webhooks name `repo.name`: a build from another repository would ship the wrong
        code for every push (builds that know their repository say so: `check_repo`)."""
        check = getattr(self.build, "check_repo", None)
        misfit = check(self.repo.name) if callable(check) else None
        if misfit:
            raise Misfit(misfit, ("build", "repo"))
        return self

    @model_validator(mode="after")
    def _preprod_per_release(self) -> Pipeline:
        url = self.preprod.url
        if self.train.in_flight == 1:
            return self
        own = (f"train.in_flight {self.train.in_flight} gives every release in flight its "
               "own pre-prod")
        if url is not None and "{slot}" not in url:
            raise ValueError(f"{own}, so preprod.url must name it with {{slot}} (it is {url!r})")
        try:
            self.preprod.fleet.for_slot(1)
        except ValueError as error:
            raise ValueError(f"{own}: preprod.fleet: {error}") from None
        return self

    @model_validator(mode="after")
    def _stagger_within_watch(self) -> Pipeline:
        stagger, watch = self.rollout.stagger, self.heartbeat.watch
        if stagger < watch:
            return self
        at = ("rollout", "stagger") if "stagger" in self.rollout.model_fields_set \
            else ("heartbeat", "watch")
        # A host counts as started while it waits out its stagger (an SSM command in
        # progress), so the watch can begin before its restart.
        raise Misfit(f"rollout.stagger ({stagger:g}s) must be shorter than heartbeat.watch "
                     f"({watch:g}s): a host may restart up to a stagger after the watch "
                     "begins, so it could restart after the watch has ended and serve the "
                     "release unwatched", at)

    @property
    def fleet_rollout(self) -> RolloutSettings:
        """The rollout settings a fleet driver takes, carrying the app its hosts run."""
        return self.rollout.running(self.app.agent_spec() if self.app else None)

    def preprod_url(self, slot: int) -> str | None:
        url = self.preprod.url
        return url.replace("{slot}", str(slot)) if url else None

    def link_values(self, number: int, sha: str, slug: str = "") -> dict[str, str]:
        return {"pipeline": self.name, "region": self.region, "release": f"{self.name}-{number}",
                "number": str(number), "sha": sha, "short_sha": sha[:7], "slug": slug}


# --- the web UI (`ship serve`): who may act from the browser ---------------------------------


class Ui(ProviderConfig):
    """Who may roll back, lock and unlock from the web UI. Pages are readable by anyone who
    reaches the server; actions need an authenticated operator. With `auth: none` (the
    default) every action is refused."""

    auth: Literal["none", "token", "header"] = Field(
        "none", description="token: log in with the token in `token_env`; header: a trusted "
        "reverse proxy names the user in `user_header`")
    token_env: str = Field("SHIP_UI_TOKEN", min_length=1,
                           description="environment variable holding the operator token")
    user_header: str = Field("X-Forwarded-User", min_length=1)
    trusted_proxies: list[str] = Field(
        default_factory=lambda: ["127.0.0.1", "::1"],
        description="addresses whose user header is believed (header auth)")
    operators: list[str] = Field(
        default_factory=list, description="who may act; [] with token auth: anyone with the "
        "token; '*' with header auth: anyone the proxy names")
    secret_env: str = Field("SHIP_UI_SECRET", min_length=1,
                            description="environment variable with the cookie signing key "
                            "(unset: a new key per process, so sessions end on restart)")
    session_hours: float = Field(12.0, gt=0, le=8760, description="how long a login lasts")

    @model_validator(mode="after")
    def _header_needs_operators(self) -> Ui:
        if self.auth == "header" and not self.operators:
            raise ValueError("auth: header needs `operators` (a list of users, or ['*'] for "
                             "anyone the proxy names)")
        return self


class ShipConfig(ProviderConfig):
    version: Literal[1] = 1
    pipelines: dict[str, Pipeline] = Field(min_length=1)
    ui: Ui = Ui()

    @model_validator(mode="before")
    @classmethod
    def _drop_extensions(cls, data: Any) -> Any:
        """Top-level keys starting with "x-" hold YAML anchors for sharing settings."""
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if not str(k).startswith("x-")}
        return data

    @field_validator("pipelines", mode="before")
    @classmethod
    def _names(cls, pipelines: Any) -> Any:
        if not isinstance(pipelines, dict):
            return pipelines
        for name in pipelines:
            if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name):
                raise ValueError(f"pipeline name {name!r}: use lowercase letters, digits, - and _")
        return {name: {**body, "name": name} if isinstance(body, dict) else body
                for name, body in pipelines.items()}

    def pipeline(self, name: str) -> Pipeline:
        try:
            return self.pipelines[name]
        except KeyError:
            known = ", ".join(self.pipelines)
            raise UnknownPipeline(f"unknown pipeline {name!r} (known: {known})") from None


def _require_unique(names: Iterable[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"name {name!r} is used twice")
        seen.add(name)


# --- loading, with problems located by file, line and field path ----------------------


def load(path: Path | str = DEFAULT_FILE) -> ShipConfig:
    path = Path(path)
    try:
        text = boundedyaml.read(path)
    except OSError as error:
        problem = Problem(str(path), None, "", f"cannot read: {error.strerror}")
        raise ConfigError([problem]) from None
    except boundedyaml.Refused as refused:
        raise _refusal(str(path), refused) from None
    return parse(text, str(path))


def parse(text: str, filename: str = "pipelines.yaml") -> ShipConfig:
    try:
        data, root = boundedyaml.load(text)
    except boundedyaml.Refused as refused:
        raise _refusal(filename, refused) from None
    if not isinstance(data, dict):
        raise ConfigError([Problem(filename, 1, "", "the file must be a mapping with 'pipelines'")])
    try:
        return ShipConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError([_problem(filename, root, e) for e in error.errors()]) from None


def _refusal(filename: str, refused: boundedyaml.Refused) -> ConfigError:
    return ConfigError([Problem(filename, refused.line, "", str(refused), refused.column)])


def _problem(filename: str, root: yaml.Node | None, error: Any) -> Problem:
    at = getattr(error.get("ctx", {}).get("error"), "at", ())
    node, path = _locate(root, (*error["loc"], *at), error["type"])
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown field (a typo?)"
    elif error["type"] == "union_tag_invalid":
        message = message.replace("Input tag", "type")
    line = node.start_mark.line + 1 if node is not None else None
    return Problem(filename, line, path, message)


def _locate(root: yaml.Node | None, loc: tuple, kind: str) -> tuple[yaml.Node | None, str]:
    """The YAML node an error is about (the key, for a mapping field), and its field path
    without pydantic's union tags."""
    node, at, parts = root, root, []
    for item in loc:
        key, child = _child(node, item)
        if child is not None:
            node, at = child, key or child
            parts.append(f"[{item}]" if isinstance(item, int) else f".{item}")
        elif not _is_tag(node, item):
            parts.append(f"[{item}]" if isinstance(item, int) else f".{item}")
            break
    return at, "".join(parts).lstrip(".")


def _child(node: yaml.Node | None, item: str | int) -> tuple[yaml.Node | None, yaml.Node | None]:
    """(key node, value node) of a mapping field, or (None, item node) of a sequence.
    Fields merged in with `<<: *anchor` are found where the anchor defines them."""
    if isinstance(node, yaml.MappingNode):
        merged: list[yaml.Node] = []
        for key, value in node.value:
            if key.value == str(item) and key.tag != "tag:yaml.org,2002:merge":
                return key, value
            if key.tag == "tag:yaml.org,2002:merge":
                merged += value.value if isinstance(value, yaml.SequenceNode) else [value]
        for source in merged:
            found = _child(source, item)
            if found[1] is not None:
                return found
    if isinstance(node, yaml.SequenceNode) and isinstance(item, int) and item < len(node.value):
        return None, node.value[item]
    return None, None


def _is_tag(node: yaml.Node | None, item: str | int) -> bool:
    """pydantic puts the discriminator's value in the location of a tagged union member."""
    if not isinstance(node, yaml.MappingNode):
        return False
    return any(k.value in ("type", "driver") and getattr(v, "value", None) == item
               for k, v in node.value)


def json_schema() -> dict[str, Any]:
    schema = ShipConfig.model_json_schema()
    schema["title"] = "ship pipelines.yaml"
    return schema
